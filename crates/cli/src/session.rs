//! `automation-framework session`: the protocol as JSON lines on one connection.
//!
//! Each stdin line is one object naming the operation in `"op"` with the protocol's
//! field names; each reply is one stdout line, in order. A bad line is answered with
//! `{"error":{"kind":…,"message":…}}` and the session goes on; an `"id"` on the
//! request is echoed on its reply. Holding the connection is what lets a script keep
//! a reservation across lines.

use serde::Serialize;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use automation_framework_client::{Client, ClientError};
use automation_framework_protocol::{
    AdminRequest, AdmitRequest, BreakersRequest, BudgetRequest, ForceBreakerRequest, LeaseRequest,
    Payload, QuotasRequest, ReportRequest, Request, Response, RouteRequest,
};

const OPS: &str =
    "ping, status, admit, report, breakers, budget, quotas, admin, force_breaker, reload, check, lease, route";

/// A line that could not become a request.
struct LineError {
    kind: &'static str,
    message: String,
}

pub async fn run(mut client: Client) -> anyhow::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    while let Some(line) = lines.next_line().await? {
        if line.trim().is_empty() {
            continue;
        }
        let (id, op, reply) = match parse(&line) {
            Err(err) => (line_id(&line), None, error_object(err.kind, &err.message)),
            Ok((id, request)) => {
                let op = request.op();
                match client.call(request).await {
                    Ok(response) => (id, Some(op), response_object(response)),
                    Err(ClientError::Closed(err)) => {
                        let kind = wire_name(&err.code);
                        write_line(
                            &mut stdout,
                            with_id(id, Some(op), error_object(&kind, &err.message)),
                        )
                        .await?;
                        anyhow::bail!("the daemon closed the session: {}", err.message);
                    }
                    Err(err) => return Err(err.into()),
                }
            }
        };
        write_line(&mut stdout, with_id(id, op, reply)).await?;
    }
    Ok(())
}

async fn write_line(stdout: &mut tokio::io::Stdout, value: Value) -> std::io::Result<()> {
    let mut text = value.to_string();
    text.push('\n');
    stdout.write_all(text.as_bytes()).await?;
    stdout.flush().await
}

fn parse(line: &str) -> Result<(Option<Value>, Request), LineError> {
    let malformed = |message: String| LineError {
        kind: "malformed",
        message,
    };
    let value: Value =
        serde_json::from_str(line).map_err(|e| malformed(format!("not JSON: {e}")))?;
    let Value::Object(mut fields) = value else {
        return Err(malformed(format!(
            "a request is a JSON object with an \"op\" field ({OPS})"
        )));
    };
    let id = fields.remove("id");
    let op = match fields.remove("op") {
        Some(Value::String(op)) => op,
        Some(other) => return Err(malformed(format!("\"op\" must be a string, got {other}"))),
        None => return Err(malformed(format!("missing \"op\"; one of: {OPS}"))),
    };
    let request = match op.as_str() {
        "ping" => no_fields(&op, fields).map(|()| Request::Ping)?,
        "status" => no_fields(&op, fields).map(|()| Request::Status)?,
        "admit" => Request::Admit(fields_of::<AdmitRequest>(&op, fields)?),
        "report" => Request::Report(fields_of::<ReportRequest>(&op, fields)?),
        "breakers" => Request::Breakers(fields_of::<BreakersRequest>(&op, fields)?),
        "budget" => Request::Budget(fields_of::<BudgetRequest>(&op, fields)?),
        "quotas" => Request::Quotas(fields_of::<QuotasRequest>(&op, fields)?),
        // {"op":"admin","set_limit":{"budget":"global","limit":50}}
        "admin" => Request::Admin(fields_of::<AdminRequest>(&op, fields)?),
        "force_breaker" => Request::ForceBreaker(fields_of::<ForceBreakerRequest>(&op, fields)?),
        "reload" => no_fields(&op, fields).map(|()| Request::Reload)?,
        // {"op":"check","lang":"python","text":"eval(x)"}
        "check" => Request::Check(fields_of::<Payload>(&op, fields)?),
        // {"op":"lease","name":"repo-main","ttl_ms":30000}
        "lease" => Request::Lease(fields_of::<LeaseRequest>(&op, fields)?),
        // {"op":"route","route":"chat"} or {"op":"route","chain":["openai","anthropic"]}
        "route" => Request::Route(fields_of::<RouteRequest>(&op, fields)?),
        other => {
            return Err(LineError {
                kind: "unknown_request",
                message: format!("unknown op {other:?}; one of: {OPS}"),
            })
        }
    };
    Ok((id, request))
}

/// The `"id"` of a line that could not become a request, if it has one.
fn line_id(line: &str) -> Option<Value> {
    serde_json::from_str::<Value>(line).ok()?.get("id").cloned()
}

fn no_fields(op: &str, fields: Map<String, Value>) -> Result<(), LineError> {
    match fields.keys().next() {
        None => Ok(()),
        Some(key) => Err(LineError {
            kind: "invalid_argument",
            message: format!("{op}: unknown field `{key}`; {op} takes no fields"),
        }),
    }
}

fn fields_of<T: serde::de::DeserializeOwned>(
    op: &str,
    fields: Map<String, Value>,
) -> Result<T, LineError> {
    serde_json::from_value(Value::Object(fields)).map_err(|e| LineError {
        kind: "invalid_argument",
        message: format!("{op}: {e}"),
    })
}

fn response_object(response: Response) -> Value {
    match response {
        Response::Pong(v) => object(&v),
        Response::Status(v) => object(&v),
        Response::Admit(v) => object(&v),
        Response::Report(v) => object(&v),
        Response::Breakers(v) => object(&v),
        Response::Budget(v) => object(&v),
        Response::Quotas(v) => object(&v),
        Response::Admin(v) => object(&v),
        Response::ForceBreaker(v) => object(&v),
        Response::Reload(v) => object(&v),
        Response::Check(v) => object(&v),
        Response::Lease(v) => object(&v),
        Response::Route(v) => object(&v),
        Response::Error(err) => error_object(&wire_name(&err.code), &err.message),
    }
}

fn object<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value)
        .unwrap_or_else(|e| error_object("internal", &format!("cannot render reply: {e}")))
}

fn error_object(kind: &str, message: &str) -> Value {
    json!({ "error": { "kind": kind, "message": message } })
}

fn with_id(id: Option<Value>, op: Option<&str>, reply: Value) -> Value {
    let Value::Object(fields) = reply else {
        return reply;
    };
    let mut out = Map::new();
    if let Some(id) = id {
        out.insert("id".into(), id);
    }
    if let Some(op) = op {
        out.insert("op".into(), Value::String(op.into()));
    }
    out.extend(fields);
    Value::Object(out)
}

fn wire_name<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "internal".into())
}
