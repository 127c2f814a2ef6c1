//! The event model: what happened ([`Alert`]), the key it is suppressed by, and
//! the Slack-compatible body posted for it.

use crate::money::Usd;

/// Something an operator should hear about.
#[derive(Debug, Clone, PartialEq)]
pub enum Alert {
    /// A breaker opened (tripped, or a trial failed).
    BreakerOpened { service: String, from: String },
    /// A breaker closed again after being open.
    BreakerClosed { service: String },
    /// A budget's spending crossed a configured percentage of its limit.
    BudgetThreshold {
        budget: String,
        threshold: u8,
        spent: Usd,
        limit: Usd,
    },
    /// A quota counter is used up; calls it governs are denied until its window ends.
    QuotaExhausted { quota: String, key: String },
    /// The ledger failed a transaction: budget-governed requests are refused.
    StoreFailed { reason: String },
    /// A configuration reload was refused; the old configuration stays in force.
    ReloadFailed { reason: String },
}

// === impl Alert ===

impl Alert {
    /// The kind, as a stable name (JSON field, logs).
    pub fn kind(&self) -> &'static str {
        match self {
            Alert::BreakerOpened { .. } => "breaker_opened",
            Alert::BreakerClosed { .. } => "breaker_closed",
            Alert::BudgetThreshold { .. } => "budget_threshold",
            Alert::QuotaExhausted { .. } => "quota_exhausted",
            Alert::StoreFailed { .. } => "store_failed",
            Alert::ReloadFailed { .. } => "reload_failed",
        }
    }

    /// What is suppressed together: kind, subject and (budgets) threshold, so 50,
    /// 80 and 100 % of one budget each fire once per window.
    pub fn key(&self) -> String {
        match self {
            Alert::BreakerOpened { service, .. } | Alert::BreakerClosed { service } => {
                format!("{}:{service}", self.kind())
            }
            Alert::BudgetThreshold {
                budget, threshold, ..
            } => format!("{}:{budget}:{threshold}", self.kind()),
            Alert::QuotaExhausted { quota, key } => format!("{}:{quota}:{key}", self.kind()),
            Alert::StoreFailed { .. } | Alert::ReloadFailed { .. } => self.kind().to_owned(),
        }
    }

    /// One line for humans (Slack's `text`).
    pub fn text(&self) -> String {
        match self {
            Alert::BreakerOpened { service, from } => {
                format!("automation-framework: circuit breaker of {service:?} opened (was {from}); calls to it are refused until it recovers")
            }
            Alert::BreakerClosed { service } => {
                format!("automation-framework: circuit breaker of {service:?} closed again")
            }
            Alert::BudgetThreshold {
                budget,
                threshold,
                spent,
                limit,
            } => format!(
                "automation-framework: budget {budget} crossed {threshold}%: {spent} spent of {limit}"
            ),
            Alert::QuotaExhausted { quota, key } => format!(
                "automation-framework: quota {quota} used up for {key}; its calls are denied until the window ends"
            ),
            Alert::StoreFailed { reason } => format!(
                "automation-framework: the ledger failed ({reason}); budget-governed requests are refused until it recovers"
            ),
            Alert::ReloadFailed { reason } => format!(
                "automation-framework: configuration reload refused ({reason}); the old configuration stays in force"
            ),
        }
    }

    /// The Slack-compatible body: `text`, plus one attachment with the fields.
    pub fn to_json(&self) -> serde_json::Value {
        let mut fields = vec![("kind", self.kind().to_owned())];
        match self {
            Alert::BreakerOpened { service, from } => {
                fields.push(("service", service.clone()));
                fields.push(("from", from.clone()));
            }
            Alert::BreakerClosed { service } => fields.push(("service", service.clone())),
            Alert::BudgetThreshold {
                budget,
                threshold,
                spent,
                limit,
            } => {
                fields.push(("budget", budget.clone()));
                fields.push(("threshold", format!("{threshold}%")));
                fields.push(("spent", spent.to_string()));
                fields.push(("limit", limit.to_string()));
            }
            Alert::QuotaExhausted { quota, key } => {
                fields.push(("quota", quota.clone()));
                fields.push(("key", key.clone()));
            }
            Alert::StoreFailed { reason } | Alert::ReloadFailed { reason } => {
                fields.push(("reason", reason.clone()));
            }
        }
        let color = match self {
            Alert::BreakerClosed { .. } => "good",
            Alert::BudgetThreshold { threshold, .. } if *threshold < 100 => "warning",
            _ => "danger",
        };
        serde_json::json!({
            "text": self.text(),
            "attachments": [{
                "color": color,
                "fields": fields
                    .into_iter()
                    .map(|(title, value)| serde_json::json!({"title": title, "value": value, "short": true}))
                    .collect::<Vec<_>>(),
            }],
        })
    }
}

/// Alerts for the tests of this module's files.
#[cfg(test)]
pub(super) mod samples {
    use super::*;

    pub(in crate::alerts) fn opened(service: &str) -> Alert {
        Alert::BreakerOpened {
            service: service.into(),
            from: "Closed".into(),
        }
    }

    pub(in crate::alerts) fn threshold(threshold: u8) -> Alert {
        Alert::BudgetThreshold {
            budget: "global".into(),
            threshold,
            spent: Usd::ZERO,
            limit: Usd::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::samples::{opened, threshold};

    #[test]
    fn the_body_is_slack_compatible() {
        let json = opened("search").to_json();
        assert!(json["text"].as_str().expect("text").contains("\"search\""));
        assert_eq!(json["attachments"][0]["fields"][1]["value"], "search");
    }

    #[test]
    fn each_threshold_and_subject_is_its_own_key() {
        assert_eq!(threshold(50).key(), "budget_threshold:global:50");
        assert_ne!(threshold(50).key(), threshold(80).key());
        assert_ne!(opened("a").key(), opened("b").key());
        let reload = super::Alert::ReloadFailed { reason: "x".into() };
        assert_eq!(reload.key(), "reload_failed");
    }
}
