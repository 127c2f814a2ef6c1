//! `[budget]` and `[prices]`: money, in exact micro-dollars, and the periods after
//! which a budget starts again.

use std::collections::BTreeMap;
use std::time::Duration;

use super::super::raw::{RawBudget, RawOrphanPolicy, RawPrice, RawReset, RawSubBudget, Spelled};
use super::super::{BudgetConfig, ConfigError, OrphanPolicy, Price};
use super::{choice, dollars, duration, invalid, listed, name};
use crate::guard::budget::BudgetSpec;
use crate::guard::period::Period;

pub(super) fn budget(raw: RawBudget) -> Result<BudgetConfig, ConfigError> {
    let global = if raw.enabled {
        Some(BudgetSpec {
            name: "global".into(),
            limit: dollars("budget.limit", raw.limit)?,
            reset: reset("budget.reset", raw.reset)?,
        })
    } else {
        None
    };
    for (idx, t) in raw.thresholds.iter().enumerate() {
        if !(1..=100).contains(t) {
            return Err(invalid(
                format!("budget.thresholds[{idx}]"),
                format!("must be a percentage from 1 to 100, got {t}"),
            ));
        }
    }
    let orphan_timeout = duration("budget.orphan_timeout", &raw.orphan_timeout)?;
    let orphan_policy = match choice("budget.orphan_policy", "policy", raw.orphan_policy)? {
        RawOrphanPolicy::ChargeEstimate => OrphanPolicy::ChargeEstimate,
        RawOrphanPolicy::Release => OrphanPolicy::Release,
    };
    Ok(BudgetConfig {
        global,
        agents: sub_budgets("agent", raw.agents)?,
        services: sub_budgets("service", raw.services)?,
        thresholds: raw.thresholds,
        orphan_timeout,
        orphan_policy,
    })
}

/// `[budget.agents.NAME]` or `[budget.services.NAME]`, named `kind:NAME`.
fn sub_budgets(
    kind: &str,
    raw: BTreeMap<String, RawSubBudget>,
) -> Result<BTreeMap<String, BudgetSpec>, ConfigError> {
    let mut out = BTreeMap::new();
    for (who, b) in raw {
        let key = format!("budget.{kind}s.{who}");
        name(&key, &who)?;
        let spec = BudgetSpec {
            name: format!("{kind}:{who}"),
            limit: dollars(&format!("{key}.limit"), b.limit)?,
            reset: reset(&format!("{key}.reset"), b.reset)?,
        };
        out.insert(who, spec);
    }
    Ok(out)
}

/// A budget's reset: a period's name, or a duration ("6h") of at least a second.
fn reset(key: &str, value: Spelled<RawReset>) -> Result<Period, ConfigError> {
    let (text, expected) = match value {
        Spelled::Known(known) => {
            return Ok(match known {
                RawReset::Never => Period::Forever,
                RawReset::Daily => Period::Daily,
                RawReset::Weekly => Period::Weekly,
                RawReset::Monthly => Period::Monthly,
            })
        }
        Spelled::Unknown { text, expected } => (text, expected),
    };
    let length = humantime::parse_duration(&text).map_err(|_| {
        invalid(
            key,
            format!(
                "unknown reset {text:?}; use {}",
                listed(expected, Some("a duration like \"6h\""))
            ),
        )
    })?;
    if length < Duration::from_secs(1) {
        return Err(invalid(key, "a reset period must be at least 1s"));
    }
    Ok(Period::Every(length))
}

/// `[prices."service"]` or `[prices."service/model"]`.
pub(super) fn prices(
    raw: BTreeMap<String, RawPrice>,
) -> Result<BTreeMap<String, Price>, ConfigError> {
    let mut prices = BTreeMap::new();
    for (target, raw) in raw {
        let key = format!("prices.\"{target}\"");
        let (service, model) = target.split_once('/').unwrap_or((&target, ""));
        name(&key, service)?;
        if target.contains('/') {
            name(&key, model)?;
        }
        let field = |field: &str| format!("{key}.{field}");
        let price = Price {
            per_request: dollars(&field("per_request"), raw.per_request)?,
            per_unit: dollars(&field("per_unit"), raw.per_unit)?,
            per_input_unit: dollars(&field("per_input_unit"), raw.per_input_unit)?,
            per_output_unit: dollars(&field("per_output_unit"), raw.per_output_unit)?,
        };
        prices.insert(target, price);
    }
    Ok(prices)
}
