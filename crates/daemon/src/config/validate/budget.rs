//! `[budget]` and `[prices]`: money, in exact micro-dollars, and the periods after
//! which a budget starts again.

use std::collections::BTreeMap;
use std::time::Duration;

use super::super::raw::{RawBudget, RawOrphanPolicy, RawPrice, RawReset, RawSubBudget, Spelled};
use super::super::{BudgetConfig, ConfigError, OrphanPolicy, Price};
use super::{choice, dollars, duration, invalid, listed, name};
use crate::guard::budget::BudgetSpec;
use crate::guard::period::Period;
use crate::money::UnitPrice;

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
        max_charge: max_charge(raw.max_charge)?,
    })
}

/// `budget.max_charge`: more than nothing (a cap of $0 would refuse every paid
/// call), at most the $1e9 any amount may be.
fn max_charge(value: f64) -> Result<crate::money::Usd, ConfigError> {
    let amount = dollars("budget.max_charge", value)?;
    if amount == crate::money::Usd::ZERO {
        return Err(invalid(
            "budget.max_charge",
            "must be more than 0 (it is the largest charge one report may file)".to_owned(),
        ));
    }
    Ok(amount)
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

/// One price of a `[prices.…]` entry, given per unit (`per_input_unit`) or per
/// million units (`per_million_input_units`), not both; 0 when neither is set.
fn unit_price(
    prefix: &str,
    (per_unit_key, per_unit): (&str, Option<f64>),
    (per_million_key, per_million): (&str, Option<f64>),
) -> Result<UnitPrice, ConfigError> {
    match (per_unit, per_million) {
        (Some(_), Some(_)) => Err(invalid(
            format!("{prefix}.{per_million_key}"),
            format!(
                "{prefix}.{per_unit_key} is set too; give the price once, per unit \
                 or per million units"
            ),
        )),
        (Some(dollars), None) => UnitPrice::per_unit(dollars)
            .map_err(|e| invalid(format!("{prefix}.{per_unit_key}"), e.to_string())),
        (None, Some(dollars)) => UnitPrice::per_million(dollars)
            .map_err(|e| invalid(format!("{prefix}.{per_million_key}"), e.to_string())),
        (None, None) => Ok(UnitPrice::ZERO),
    }
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
        let none = ("", None);
        let price = Price {
            per_request: unit_price(&key, ("per_request", raw.per_request), none)?,
            per_unit: unit_price(
                &key,
                ("per_unit", raw.per_unit),
                ("per_million_units", raw.per_million_units),
            )?,
            per_input_unit: unit_price(
                &key,
                ("per_input_unit", raw.per_input_unit),
                ("per_million_input_units", raw.per_million_input_units),
            )?,
            per_output_unit: unit_price(
                &key,
                ("per_output_unit", raw.per_output_unit),
                ("per_million_output_units", raw.per_million_output_units),
            )?,
        };
        prices.insert(target, price);
    }
    Ok(prices)
}
