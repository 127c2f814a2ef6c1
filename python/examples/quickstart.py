"""The two-line use: ask before the call, report after it.

Run with a daemon listening (AUTOMATION_FRAMEWORK_SOCKET names its socket if
it is not at the default path).
"""

from automation_framework import Client


def upstream() -> str:
    return "42"


client = Client(agent="quickstart")
with client.call("openai", cost=0.02) as call:
    answer = upstream()
print(answer, call.report)
