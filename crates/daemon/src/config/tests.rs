//! Config parsing and validation: every error names its key.

use super::*;
use crate::guard::period::Period;
use crate::guard::rate::Scope;

fn error_of(text: &str) -> String {
    Config::from_toml(text).unwrap_err().to_string()
}

#[test]
fn the_shipped_file_is_the_built_in_default() {
    let shipped = Config::from_toml(include_str!("../../../../config/automation-framework.toml"))
        .expect("shipped config is valid");
    assert_eq!(shipped, Config::default());
}

#[test]
fn built_in_defaults_follow_the_spec() {
    let config = Config::default();
    assert_eq!(config.breaker.failure_threshold, 5);
    assert_eq!(config.breaker.open_for, Duration::from_secs(60));
    assert_eq!(config.breaker.success_threshold, 3);
    let rule = &config.rate_limits[0];
    assert_eq!((rule.rate.get(), rule.burst.get()), (10, 100));
    assert_eq!(rule.per, Duration::from_secs(1));
    assert_eq!(config.daemon.mode, Mode::Enforce);
}

#[test]
fn a_typo_is_rejected_with_the_key() {
    let err = error_of("[breaker]\nfailure_treshold = 3\n");
    assert!(err.contains("unknown field `failure_treshold`"), "{err}");
    assert!(err.contains("line 2"), "{err}");

    let err = error_of("[[rate_limits]]\nname = \"x\"\nrat = 5\n");
    assert!(err.contains("unknown field `rat`"), "{err}");
}

#[test]
fn invalid_rates_name_the_rule() {
    let err = error_of("[[rate_limits]]\nname = \"x\"\nrate = 0\n");
    assert_eq!(err, "rate_limits[0].rate: must be at least 1, got 0");

    let err = error_of("[[rate_limits]]\nname = \"x\"\n");
    assert!(err.starts_with("rate_limits[0].rate: missing"), "{err}");

    let err = error_of("[[rate_limits]]\nname = \"x\"\nrate = 5\nper = \"soon\"\n");
    assert!(err.starts_with("rate_limits[0].per:"), "{err}");

    let err = error_of("[[rate_limits]]\nname = \"x\"\nrate = 5\nscope = \"user\"\n");
    assert!(err.contains("unknown scope \"user\""), "{err}");

    let err = error_of(
        "[[rate_limits]]\nname = \"x\"\nrate = 5\n[[rate_limits]]\nname = \"x\"\nrate = 6\n",
    );
    assert!(err.starts_with("rate_limits[1].name:"), "{err}");
}

#[test]
fn presets() {
    let config = Config::from_toml("[[rate_limits]]\nname = \"o\"\npreset = \"openai\"\n").unwrap();
    let rule = &config.rate_limits[0];
    assert_eq!(
        (rule.rate.get(), rule.per, rule.burst.get()),
        (3500, Duration::from_secs(60), 3500)
    );
    assert_eq!(rule.scope, Scope::Service);

    let config =
        Config::from_toml("[[rate_limits]]\nname = \"a\"\npreset = \"anthropic\"\nburst = 10\n")
            .unwrap();
    assert_eq!(config.rate_limits[0].burst.get(), 10);

    let err = error_of("[[rate_limits]]\nname = \"o\"\npreset = \"openia\"\n");
    assert!(
        err.contains("known presets: openai, anthropic, groq"),
        "{err}"
    );
}

#[test]
fn a_file_without_settings_is_refused_and_an_empty_table_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    for text in [
        "",
        "\n \t\n",
        "# only a comment\n\n   # and another\n",
        "\u{feff}",
    ] {
        std::fs::write(&path, text).unwrap();
        let err = Config::load(&path).expect_err("refused");
        assert!(matches!(err, ConfigError::Empty { .. }), "{text:?}: {err}");
        let message = err.to_string();
        assert!(
            message.contains("holds no settings") && message.contains("start without --config"),
            "{message}"
        );
    }
    for text in ["[daemon]\n", "# defaults\nrate_limits = []\n"] {
        std::fs::write(&path, text).unwrap();
        Config::load(&path).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    }
}

#[test]
fn an_empty_list_means_no_rate_limits() {
    assert!(Config::from_toml("rate_limits = []\n")
        .unwrap()
        .rate_limits
        .is_empty());
}

#[test]
fn service_overrides_inherit_the_defaults() {
    let config = Config::from_toml(
        "[breaker]\nfailure_threshold = 7\n[services.openai]\nbreaker = { open_for = \"5s\" }\n",
    )
    .unwrap();
    let openai = config.breaker_for("openai");
    assert_eq!(openai.failure_threshold, 7);
    assert_eq!(openai.open_for, Duration::from_secs(5));
    assert_eq!(
        config.breaker_for("other").open_for,
        Duration::from_secs(60)
    );

    let err = error_of("[services.openai]\nbreaker = { failure_rate = 150 }\n");
    assert_eq!(
        err,
        "services.openai.breaker.failure_rate: must be a percentage from 1 to 100, got 150"
    );
}

#[test]
fn a_breaker_that_can_never_open_is_refused() {
    let err = error_of("[breaker]\nfailure_threshold = 0\n");
    assert!(
        err.starts_with("breaker: failure_threshold and window are both 0"),
        "{err}"
    );
}

#[test]
fn strict_services() {
    let err = error_of(
        "[daemon]\nallow_unknown_services = false\n[[rate_limits]]\nname = \"x\"\nrate = 1\nservices = [\"openai\"]\n",
    );
    assert!(err.starts_with("rate_limits[0].services:"), "{err}");
    let config =
        Config::from_toml("[daemon]\nallow_unknown_services = false\n[services.openai]\n").unwrap();
    assert!(config.knows_service("openai"));
    assert!(!config.knows_service("opanai"));
}

#[test]
fn daemon_values() {
    assert_eq!(
        error_of("[daemon]\nmode = \"dry\"\n"),
        "daemon.mode: unknown mode \"dry\"; use \"enforce\" or \"shadow\""
    );
    assert_eq!(
        error_of("[daemon]\nmax_connections = 0\n"),
        "daemon.max_connections: must be at least 1, got 0"
    );
    assert!(error_of("[daemon]\nsocket = \"rel/a.sock\"\n").starts_with("daemon.socket:"));
    assert!(error_of("[daemon]\nidle_timeout = \"0s\"\n").starts_with("daemon.idle_timeout:"));
    assert_eq!(
        error_of("[daemon]\nmax_batch = 0\n"),
        "daemon.max_batch: must be at least 1, got 0"
    );
    assert_eq!(
        error_of("[daemon]\nmax_connections_per_uid = 0\n"),
        "daemon.max_connections_per_uid: must be at least 1, got 0"
    );
}

#[test]
fn purge_interval() {
    assert_eq!(
        Config::default().daemon.purge_interval,
        Duration::from_secs(30)
    );
    let config = Config::from_toml("[daemon]\npurge_interval = \"1s\"\n").unwrap();
    assert_eq!(config.daemon.purge_interval, Duration::from_secs(1));
    assert_eq!(
        error_of("[daemon]\npurge_interval = \"0s\"\n"),
        "daemon.purge_interval: must be longer than zero"
    );
    assert!(error_of("[daemon]\npurge_interval = \"soon\"\n").starts_with("daemon.purge_interval:"));
}

#[test]
fn socket_mode_and_group() {
    let daemon = Config::default().daemon;
    assert_eq!(daemon.socket_mode, 0o660);
    assert_eq!(daemon.socket_group, None);
    let config =
        Config::from_toml("[daemon]\nsocket_mode = \"0600\"\nsocket_group = \"agents\"\n").unwrap();
    assert_eq!(config.daemon.socket_mode, 0o600);
    assert_eq!(config.daemon.socket_group.as_deref(), Some("agents"));
    assert_eq!(
        error_of("[daemon]\nsocket_mode = \"0999\"\n"),
        "daemon.socket_mode: \"0999\" is not a permission mode; write octal digits like \"0660\""
    );
    assert!(error_of("[daemon]\nsocket_mode = \"4660\"\n").starts_with("daemon.socket_mode:"));
    assert!(error_of("[daemon]\nsocket_mode = \"0060\"\n").contains("keep the owner bits rw"));
    assert!(error_of("[daemon]\nsocket_mode = 660\n").contains("invalid type"));
    assert!(error_of("[daemon]\nsocket_group = \"\"\n").starts_with("daemon.socket_group:"));
}

#[test]
fn access_defaults() {
    let access = Config::default().access;
    assert_eq!(access.agent_uids, vec![0]);
    assert_eq!(access.admin_uids, vec![0]);
    assert_eq!(access.agent_groups.len(), 1);
    assert_eq!(access.agent_groups[0].name, "automation-framework");
    assert!(Config::default().agents.is_empty());
}

#[test]
fn access_values_name_the_key() {
    assert_eq!(
        error_of("[access]\nagent_groups = [\"ok\", \"\"]\n"),
        "access.agent_groups[1]: \"\" is not a group name"
    );
    assert!(error_of("[access]\nadmin_uids = [-1]\n").contains("invalid value"));
    assert!(error_of("[access]\nadmins = [0]\n").contains("unknown field `admins`"));
    let config =
        Config::from_toml("[access]\nadmin_groups = [\"root\", \"no-such-group-af\"]\n").unwrap();
    let resolved: Vec<_> = config.access.admin_groups.iter().map(|g| g.gid).collect();
    assert_eq!(resolved, vec![Some(0), None]);
}

#[test]
fn agent_bindings() {
    let config = Config::from_toml(
        "[[agents]]\nname = \"planner\"\nuids = [1001]\n[[agents]]\nname = \"batch\"\ngids = [700]\n",
    )
    .unwrap();
    assert_eq!(config.agents.len(), 2);
    assert_eq!(config.agents[1].gids, vec![700]);

    assert_eq!(
        error_of("[[agents]]\nname = \"planner\"\n"),
        "agents[0]: binds the agent name \"planner\" to no uid and no gid, so nobody could use it; give `uids` or `gids`"
    );
    assert_eq!(
        error_of("[[agents]]\nname = \"a\"\nuids = [1]\n[[agents]]\nname = \"a\"\nuids = [2]\n"),
        "agents[1].name: \"a\" is already bound by agents[0]; merge the two entries"
    );
    assert!(error_of("[[agents]]\nname = \"\"\nuids = [1]\n").starts_with("agents[0].name:"));
    assert!(error_of("[[agents]]\nname = \"a\"\nuid = [1]\n").contains("unknown field `uid`"));
}

#[test]
fn budgets_prices_and_quotas() {
    let config = Config::from_toml(
        "[budget]\nlimit = 50.5\nreset = \"weekly\"\n[budget.agents.planner]\nlimit = 2.0\nreset = \"6h\"\n\
         [prices.\"llm/big\"]\nper_request = 0.01\n[[quotas]]\nname = \"q\"\nlimit = 3\nwindow = \"day\"\n",
    )
    .unwrap();
    let global = config.budget.global.as_ref().unwrap();
    assert_eq!(
        (global.limit, global.reset),
        (Usd::from_dollars(50.5).unwrap(), Period::Weekly)
    );
    assert_eq!(
        config.budget.agents["planner"].reset,
        Period::Every(Duration::from_secs(6 * 3600))
    );
    assert_eq!(config.budget.agents["planner"].name, "agent:planner");
    assert!(config.price_for("llm", Some("big")).is_some());
    assert!(config.price_for("llm", None).is_none());
    assert_eq!(config.quotas[0].window, Period::Daily);
    assert!(Config::from_toml("[budget]\nenabled = false\n")
        .unwrap()
        .budget
        .global
        .is_none());
}

#[test]
fn money_and_windows_are_validated_with_their_keys() {
    assert_eq!(
        error_of("[budget]\nlimit = -1.0\n"),
        "budget.limit: -1 is negative; amounts are 0 or more"
    );
    assert!(error_of("[budget]\nreset = \"fortnightly\"\n")
        .starts_with("budget.reset: unknown reset \"fortnightly\""));
    assert!(error_of("[budget.agents.a]\nlimit = 1.0\nreset = \"0s\"\n")
        .starts_with("budget.agents.a.reset:"));
    assert!(error_of("[budget]\nthresholds = [0]\n").starts_with("budget.thresholds[0]:"));
    assert!(error_of("[budget]\norphan_policy = \"forget\"\n").starts_with("budget.orphan_policy:"));
    assert!(error_of("[prices.llm]\nper_token = 1.0\n").contains("unknown field `per_token`"));
    assert!(
        error_of("[prices.llm]\nper_request = nan\n").starts_with("prices.\"llm\".per_request:")
    );
    assert!(
        error_of("[[quotas]]\nname = \"q\"\nlimit = 1\nwindow = \"year\"\n")
            .starts_with("quotas[0].window: unknown window \"year\"")
    );
    assert!(
        error_of("[[quotas]]\nname = \"q\"\nwindow = \"day\"\n").contains("missing field `limit`")
    );
    assert!(error_of("[breaker]\nwindow = 10\n")
        .starts_with("breaker.min_calls: is 20 but the window holds only 10 calls"));
}

#[test]
fn alerts_take_https_and_refuse_bad_values_with_the_key() {
    let config = Config::from_toml("[alerts]\nwebhook = \"https://hooks.slack.com/services/x\"\n")
        .expect("https is accepted");
    let webhook = config.alerts.webhook.expect("a webhook");
    assert!(webhook.is_https());
    assert_eq!(webhook.url, "https://hooks.slack.com/services/x");
    let err = error_of("[alerts]\nwebhook = \"hooks.slack.com/x\"\n");
    assert!(err.starts_with("alerts.webhook: "), "{err}");
    let err = error_of("[alerts]\nsuppress = \"soon\"\n");
    assert!(err.starts_with("alerts.suppress: "), "{err}");
    let err = error_of("[alerts]\nqueue = 0\n");
    assert!(err.starts_with("alerts.queue: "), "{err}");
    let config = Config::from_toml(
        "[alerts]\nwebhook = \"http://127.0.0.1:9000/hook\"\nsuppress = \"1m\"\n",
    )
    .expect("valid");
    assert_eq!(config.alerts.suppress, Duration::from_secs(60));
    assert_eq!(
        config.alerts.webhook.map(|w| w.url),
        Some("http://127.0.0.1:9000/hook".to_owned())
    );
}

fn llm_price(entry: &str) -> Price {
    *Config::from_toml(&format!("[prices.llm]\n{entry}"))
        .unwrap()
        .price_for("llm", None)
        .unwrap()
}

fn micros(amount: Usd) -> i64 {
    amount.micros()
}

/// Issue 10: prices were rounded to whole micro-dollars before they were
/// multiplied ($0.0000025 became $0.000003, $0.00000015 became 0).
#[test]
fn prices_below_a_micro_dollar_are_kept_exactly_and_rounded_once_at_the_total() {
    let price = llm_price("per_input_unit = 0.0000025\nper_output_unit = 0.000015\n");
    assert_eq!(
        micros(price.cost(1, 1_000, 200)),
        5_500,
        "$0.0055, not $0.006"
    );
    let mini = llm_price("per_input_unit = 0.00000015\nper_output_unit = 0.0000006\n");
    assert_eq!(micros(mini.cost(1, 1_000, 0)), 150, "input is not free");
    // 7 tokens at $0.00000015 are $0.00000105: charged up to $0.000002, never down.
    assert_eq!(micros(mini.cost(1, 7, 0)), 2);
    assert_eq!(
        micros(mini.cost(1, 0, 0)),
        0,
        "no units, no request price: free"
    );
    let per_request = llm_price("per_request = 0.0000001\nper_unit = 0.0000001\n");
    assert_eq!(micros(per_request.cost(9, 0, 0)), 1, "$0.000001 exactly");
    assert_eq!(
        micros(per_request.cost(10, 0, 0)),
        2,
        "$0.0000011, rounded up"
    );
}

/// Published list prices per million tokens (standard tier, USD), as read on
/// 2026-11-27 with the stored copies of the providers' pricing pages:
/// gpt-4o-mini $0.15 in / $0.60 out and gpt-4o $2.50 / $10.00 (OpenAI API
/// pricing, as summarised e.g. by promptunit.ai's "GPT-4o-mini Pricing" guide),
/// Claude Haiku 3.5 $0.80 / $4 (docs.anthropic.com/en/docs/about-claude/pricing).
/// The expected totals are the exact products, rounded up to the micro-dollar
/// only where they have a remainder.
#[test]
fn published_per_million_token_prices_cost_exactly_to_the_micro_dollar() {
    let config = Config::from_toml(
        r#"
[prices."openai/gpt-4o-mini"]
per_million_input_units = 0.15
per_million_output_units = 0.60
[prices."openai/gpt-4o"]
per_million_input_units = 2.50
per_million_output_units = 10.00
[prices."anthropic/claude-3-5-haiku"]
per_million_input_units = 0.80
per_million_output_units = 4.00
"#,
    )
    .unwrap();
    let cost = |service: &str, model: &str, input: u32, output: u32| {
        micros(
            config
                .price_for(service, Some(model))
                .unwrap()
                .cost(1, input, output),
        )
    };
    // 12,345 × $0.15/M + 678 × $0.60/M = $0.00185175 + $0.0004068 = $0.00225855.
    assert_eq!(cost("openai", "gpt-4o-mini", 12_345, 678), 2_259);
    // 12,345 × $2.50/M + 678 × $10/M = $0.0308625 + $0.00678 = $0.0376425.
    assert_eq!(cost("openai", "gpt-4o", 12_345, 678), 37_643);
    // 12,345 × $0.80/M + 678 × $4/M = $0.009876 + $0.002712 = $0.012588 exactly.
    assert_eq!(cost("anthropic", "claude-3-5-haiku", 12_345, 678), 12_588);
    // A million of each: the list prices themselves, to the micro-dollar.
    assert_eq!(cost("openai", "gpt-4o-mini", 1_000_000, 1_000_000), 750_000);
    assert_eq!(cost("openai", "gpt-4o", 1_000_000, 1_000_000), 12_500_000);
    assert_eq!(
        cost("anthropic", "claude-3-5-haiku", 1_000_000, 1_000_000),
        4_800_000
    );
    // The per-unit and per-million spellings are the same price.
    assert_eq!(
        *config.price_for("openai", Some("gpt-4o-mini")).unwrap(),
        llm_price("per_input_unit = 0.00000015\nper_output_unit = 0.0000006\n")
    );
}

#[test]
fn prices_that_cannot_be_held_exactly_are_refused_with_the_key() {
    assert_eq!(
        error_of("[prices.llm]\nper_input_unit = 0.0000000000001\n"),
        "prices.\"llm\".per_input_unit: 0.0000000000001 has more than 12 decimal places, \
         which a price per unit cannot hold exactly (the smallest step is \
         $0.000000000001); round it to 12 places"
    );
    assert!(
        error_of("[prices.llm]\nper_million_output_units = 0.0000001\n").starts_with(
            "prices.\"llm\".per_million_output_units: 0.0000001 has more than 6 decimal places"
        )
    );
    assert!(
        error_of("[prices.\"llm/big\"]\nper_unit = 0.1234567890123456\n").starts_with(
            "prices.\"llm/big\".per_unit: 0.1234567890123456 has more than 15 significant digits"
        )
    );
    assert_eq!(
        error_of("[prices.llm]\nper_input_unit = 0.0000025\nper_million_input_units = 2.5\n"),
        "prices.\"llm\".per_million_input_units: prices.\"llm\".per_input_unit is set too; \
         give the price once, per unit or per million units"
    );
    assert!(error_of("[prices.llm]\nper_output_unit = -0.1\n")
        .starts_with("prices.\"llm\".per_output_unit: -0.1 is negative"));
    assert!(error_of("[prices.llm]\nper_million_requests = 1\n")
        .contains("unknown field `per_million_requests`"));
    // An integer is a price too (TOML tells `1` and `1.0` apart).
    assert_eq!(
        micros(llm_price("per_request = 1\n").cost(1, 0, 0)),
        1_000_000
    );
}

#[test]
fn the_largest_prices_and_unit_counts_do_not_overflow() {
    let max = llm_price(
        "per_request = 1e9\nper_unit = 1e9\nper_input_unit = 1e9\nper_output_unit = 1e9\n",
    );
    let all = max.cost(u32::MAX, u32::MAX, u32::MAX);
    assert_eq!(
        all,
        Usd::from_dollars(1e9).unwrap(),
        "capped at the largest amount"
    );
    let smallest = Price {
        per_input_unit: UnitPrice::from_picos(1),
        ..Price::default()
    };
    // 2³²−1 pico-dollars: $0.004294967295, rounded up.
    assert_eq!(micros(smallest.cost(1, u32::MAX, 0)), 4_295);
}

proptest::proptest! {
    /// For any price an operator can write (≤ 12 decimals, ≤ 15 significant
    /// digits, up to the maximum) and any unit counts, the charge is the exact
    /// cost rounded up to the micro-dollar: never less, and less than
    /// $0.000001 more.
    #[test]
    fn a_cost_is_exact_to_the_micro_dollar(
        digits in proptest::array::uniform4(proptest::prop_oneof![
            0u64..=10_000_000, // up to $0.00001 a unit: token prices
            0u64..=999_999_999_999_999,
        ]),
        shifts in proptest::array::uniform4(proptest::prop_oneof![
            proptest::strategy::Just(0u32),
            0u32..=6,
        ]),
        units in proptest::prop_oneof![1u32..=10, 1u32..],
        input in proptest::prop_oneof![0u32..=200_000, proptest::num::u32::ANY],
        output in proptest::prop_oneof![0u32..=20_000, proptest::num::u32::ANY],
    ) {
        let picos: Vec<u128> = digits
            .iter()
            .zip(shifts)
            .map(|(d, s)| u128::from(*d) * 10u128.pow(s))
            .collect();
        let dollars = |p: u128| format!("{}.{:012}", p / 10u128.pow(12), p % 10u128.pow(12));
        let price = llm_price(&format!(
            "per_request = {}\nper_unit = {}\nper_input_unit = {}\nper_output_unit = {}\n",
            dollars(picos[0]),
            dollars(picos[1]),
            dollars(picos[2]),
            dollars(picos[3]),
        ));
        let exact = picos[0]
            + picos[1] * u128::from(units)
            + picos[2] * u128::from(input)
            + picos[3] * u128::from(output);
        let charged = u128::try_from(micros(price.cost(units, input, output))).unwrap();
        let max = 1_000_000_000 * 1_000_000;
        if exact <= max * 1_000_000 {
            proptest::prop_assert!(charged * 1_000_000 >= exact, "under-charged");
            proptest::prop_assert!(charged * 1_000_000 - exact < 1_000_000, "over by a micro");
        } else {
            proptest::prop_assert_eq!(charged, max, "capped at $1e9");
        }
    }
}

#[test]
fn a_ca_file_is_read_when_the_config_is_loaded() {
    let err = error_of("[alerts]\nca_file = \"/nonexistent/ca.pem\"\n");
    assert!(
        err.starts_with("alerts.ca_file: cannot read /nonexistent/ca.pem"),
        "{err}"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("ca.pem");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = params.self_signed(&key).expect("self-signed CA");
    std::fs::write(&path, ca.pem()).expect("write the CA");
    let config = Config::from_toml(&format!(
        "[alerts]\nwebhook = \"https://127.0.0.1:8443/hook\"\nca_file = \"{}\"\n",
        path.display()
    ))
    .expect("valid");
    let bundle = config.alerts.ca.expect("a CA bundle");
    assert_eq!(bundle.certs, vec![ca.der().clone()]);
    assert_eq!(bundle.path, path);
}

#[test]
fn enum_values_name_the_key_and_list_the_spellings() {
    assert_eq!(
        error_of("[budget]\nreset = \"fortnightly\"\n"),
        "budget.reset: unknown reset \"fortnightly\"; use \"never\", \"daily\", \"weekly\", \"monthly\" or a duration like \"6h\""
    );
    assert_eq!(
        error_of("[[quotas]]\nname = \"q\"\nlimit = 1\nwindow = \"day\"\nscope = \"Agent\"\n"),
        "quotas[0].scope: unknown scope \"Agent\"; use \"global\", \"agent\", \"service\" or \"agent+service\""
    );
    assert_eq!(
        error_of("[breaker]\nforce = \"shut\"\n"),
        "breaker.force: unknown value \"shut\"; use \"auto\", \"open\", \"closed\" or \"disabled\""
    );
    let err = error_of("[daemon]\nmode = 1\n");
    assert!(
        err.contains("invalid type: integer `1`, expected a string"),
        "{err}"
    );
    assert!(err.contains("line 2"), "{err}");
    let config = Config::from_toml(
        "[budget]\norphan_policy = \"release\"\n[[rate_limits]]\nname = \"t\"\nrate = 5\nscope = \"agent+service\"\nweight = \"units\"\n",
    )
    .expect("valid");
    assert_eq!(config.budget.orphan_policy, OrphanPolicy::Release);
    assert_eq!(config.rate_limits[0].scope, Scope::AgentService);
}

#[test]
fn concurrency_lease_and_content_values_name_the_key() {
    let err = error_of("[[bulkheads]]\nname = \"max_active_agents\"\nmax_in_flight = 1\n");
    assert!(
        err.starts_with("bulkheads[0].name:") && err.contains("concurrency.max_active_agents"),
        "{err}"
    );
    let err = error_of("[leases]\ndefault_ttl = \"2h\"\nmax_ttl = \"1h\"\n");
    assert!(
        err.starts_with("leases.default_ttl:") && err.contains("longer than leases.max_ttl"),
        "{err}"
    );
    assert_eq!(
        error_of("[leases]\nmax_per_connection = 0\n"),
        "leases.max_per_connection: must be at least 1, got 0"
    );
    let err = error_of("[leases]\nmax_total = 1\n");
    assert!(err.starts_with("leases.max_total: is 1"), "{err}");
    for size in [0, (1 << 20) + 1] {
        let err = error_of(&format!("[content]\nmax_payload = {size}\n"));
        assert!(
            err.starts_with("content.max_payload: must be 1 to"),
            "{err}"
        );
    }
    let err = error_of("[budget]\nmax_charge = 0.0\n");
    assert!(
        err.starts_with("budget.max_charge: must be more than 0"),
        "{err}"
    );
}

#[test]
fn limits_on_rates_rule_counts_and_the_http_address() {
    let err = error_of("[[rate_limits]]\nname = \"x\"\nrate = 2000000000\nper = \"1s\"\n");
    assert!(
        err.starts_with("rate_limits[0].rate: 2000000000 per 1s is faster than one per nanosecond"),
        "{err}"
    );
    let many: String = (0..=MAX_RATE_LIMITS)
        .map(|n| format!("[[rate_limits]]\nname = \"r{n}\"\nrate = 1\n"))
        .collect();
    let err = error_of(&many);
    assert!(
        err.starts_with(&format!(
            "rate_limits: {} rate limits, more than the {MAX_RATE_LIMITS}",
            MAX_RATE_LIMITS + 1
        )),
        "{err}"
    );
    let err = error_of("[http]\nlisten = \"0.0.0.0:8765\"\n");
    assert!(
        err.starts_with("http.listen: 0.0.0.0:8765 is not a loopback address"),
        "{err}"
    );
    Config::from_toml("[http]\nlisten = \"0.0.0.0:8765\"\nallow_remote = true\n")
        .expect("allowed when asked for");
}
