//! Transcript tests of the upload policy: conditions and time in, decisions out.
//!
//! Each transcript is text. Lines are:
//! - `policy { ... }`: the policy for the lines below, as a TOML inline table over the defaults;
//! - `at <day> <HH:MM>`: the local time (and, 30 s past that minute, the instant) for the lines
//!   below;
//! - `<conditions> => <decision>`: conditions as `key=value` words (unspecified means unknown):
//!   `net=unknown|offline|online`, `metered=yes|no`, `ssid=NAME`, `battery=yes|no` (on battery),
//!   `pct=N`, `low_power=yes|no`, `idle=yes|no`, `thermal=nominal|fair|serious|critical`, and
//!   `size=N` to decide for one file of N bytes; the decision is `allow`, `allow cap=N`,
//!   `allow max_file=N` or `wait <reason>`;
//! - `hint => <when>`: `next_change_hint`, as `+<H>h<MM>m (<day> <HH:MM>)` or `none`.
//!
//! The test recomputes every `=>` right-hand side and compares the whole text, so a failure
//! shows the transcript as it is next to the transcript as expected.

use ferry_core::conditions::{Conditions, LocalTime, Network, Now, Thermal, Weekday};
use ferry_core::policy::{Decision, Policy, decide, decide_for_file, next_change_hint};

/// A Monday 00:00 UTC (2026-11-16); transcripts use UTC as the local zone.
const MONDAY_MS: u64 = 1_763_251_200_000;

fn weekday(s: &str) -> Weekday {
    *Weekday::ALL
        .iter()
        .find(|d| d.name() == s)
        .unwrap_or_else(|| panic!("bad day {s:?}"))
}

fn yes_no(key: &str, v: &str) -> bool {
    match v {
        "yes" => true,
        "no" => false,
        _ => panic!("{key}={v}: expected yes or no"),
    }
}

fn parse_conditions(words: &str) -> (Conditions, Option<u64>) {
    let mut c = Conditions::default();
    let mut online = false;
    let mut metered = None;
    let mut ssid = None;
    let mut size = None;
    for word in words.split_whitespace() {
        let (k, v) = word
            .split_once('=')
            .unwrap_or_else(|| panic!("bad word {word:?}"));
        match k {
            "net" => match v {
                "unknown" => c.network = Network::Unknown,
                "offline" => c.network = Network::Offline,
                "online" => online = true,
                _ => panic!("bad net {v}"),
            },
            "metered" => metered = Some(yes_no(k, v)),
            "ssid" => ssid = Some(v.to_owned()),
            "battery" => c.power.on_battery = Some(yes_no(k, v)),
            "pct" => c.power.battery_percent = Some(v.parse().unwrap()),
            "low_power" => c.power.low_power = Some(yes_no(k, v)),
            "idle" => c.user_idle = Some(yes_no(k, v)),
            "thermal" => {
                c.thermal = serde_json::from_value(serde_json::Value::String(v.into())).unwrap()
            }
            "size" => size = Some(v.parse().unwrap()),
            _ => panic!("bad key {k}"),
        }
    }
    if online {
        c.network = Network::Online {
            metered,
            wifi_ssid: ssid,
        };
    } else {
        assert!(
            metered.is_none() && ssid.is_none(),
            "metered/ssid need net=online"
        );
    }
    (c, size)
}

fn render_decision(d: Decision) -> String {
    match d {
        Decision::Allow {
            bandwidth_cap_bytes_per_s,
            max_file_bytes,
        } => {
            let mut s = "allow".to_owned();
            if let Some(c) = bandwidth_cap_bytes_per_s {
                s += &format!(" cap={c}");
            }
            if let Some(m) = max_file_bytes {
                s += &format!(" max_file={m}");
            }
            s
        }
        Decision::Wait(r) => format!("wait {}", r.code()),
    }
}

fn parse_policy(inline: &str) -> Policy {
    #[derive(serde::Deserialize)]
    struct Wrap {
        p: Policy,
    }
    let w: Wrap = toml::from_str(&format!("p = {inline}"))
        .unwrap_or_else(|e| panic!("bad policy {inline}: {e}"));
    w.p
}

/// Recomputes every right-hand side of `transcript` and returns the result.
fn run(transcript: &str) -> String {
    let mut policy = Policy::default();
    let mut now = Now {
        unix_ms: MONDAY_MS + 12 * 3_600_000 + 30_000,
        local: LocalTime::new(Weekday::Mon, 12, 0).unwrap(),
    };
    let mut out = String::new();
    for line in transcript.lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            out += &format!("{line}\n");
        } else if let Some(rest) = t.strip_prefix("policy ") {
            policy = parse_policy(rest);
            out += &format!("{line}\n");
        } else if let Some(rest) = t.strip_prefix("at ") {
            let (day, hm) = rest.split_once(' ').unwrap();
            let (h, m) = hm.split_once(':').unwrap();
            let local = LocalTime::new(weekday(day), h.parse().unwrap(), m.parse().unwrap())
                .unwrap_or_else(|| panic!("bad time {rest}"));
            now = Now {
                unix_ms: MONDAY_MS + u64::from(local.minute_of_week()) * 60_000 + 30_000,
                local,
            };
            out += &format!("{line}\n");
        } else if let Some((lhs, _)) = line.split_once("=>") {
            let rhs = if lhs.trim() == "hint" {
                match next_change_hint(&policy, &now) {
                    None => "none".to_owned(),
                    Some(ms) => {
                        assert_eq!(ms % 60_000, 0, "hint not on a minute boundary");
                        let ahead_min = (ms - (now.unix_ms - now.unix_ms % 60_000)) / 60_000;
                        let m = (u64::from(now.local.minute_of_week()) + ahead_min) % (7 * 1440);
                        let at = LocalTime {
                            weekday: Weekday::from_index((m / 1440) as u32),
                            minute_of_day: (m % 1440) as u16,
                        };
                        format!("+{}h{:02}m ({at})", ahead_min / 60, ahead_min % 60)
                    }
                }
            } else {
                let (c, size) = parse_conditions(lhs);
                let d = match size {
                    Some(n) => decide_for_file(&policy, &c, &now, n),
                    None => decide(&policy, &c, &now),
                };
                // Determinism, checked on every line.
                assert_eq!(d, decide_for_file_or_not(&policy, &c, &now, size));
                render_decision(d)
            };
            out += &format!("{}=> {rhs}\n", lhs);
        } else {
            panic!("bad transcript line {line:?}");
        }
    }
    out
}

fn decide_for_file_or_not(p: &Policy, c: &Conditions, now: &Now, size: Option<u64>) -> Decision {
    match size {
        Some(n) => decide_for_file(p, c, now, n),
        None => decide(p, c, now),
    }
}

#[track_caller]
fn check(expected: &str) {
    let actual = run(expected);
    if actual != expected {
        panic!("transcript differs\n--- expected\n{expected}\n--- actual\n{actual}");
    }
}

#[test]
fn defaults_with_unknown_and_known_conditions() {
    check(
        "\
# Nothing known: nothing blocks (unknown is permissive, the network included).
=> allow
net=unknown battery=yes => allow
net=online => allow
net=online metered=no ssid=Home battery=no pct=100 low_power=no idle=no thermal=nominal => allow
# Offline only when positively known.
net=offline => wait waiting_for_network
# Defaults: require unmetered, battery at least 30% when on battery, pause on low power and
# on serious heat; charging and idleness not required.
net=online metered=yes => wait waiting_for_unmetered_network
net=online metered=no => allow
battery=yes => allow
battery=yes pct=29 => wait battery_below_threshold
battery=yes pct=30 => allow
battery=no pct=5 => allow
pct=5 => allow
low_power=yes => wait low_power_mode
low_power=no => allow
thermal=fair => allow
thermal=serious => wait thermal_pressure
thermal=critical => wait thermal_pressure
idle=no => allow
",
    );
}

#[test]
fn each_rule_when_turned_on_or_off() {
    check(
        "\
policy { require_unmetered = false }
net=online metered=yes => allow
policy { require_charging = true }
=> allow
battery=yes pct=100 => wait on_battery
battery=no pct=10 => allow
pct=10 => allow
policy { min_battery_percent = 50 }
battery=yes pct=49 => wait battery_below_threshold
battery=yes pct=50 => allow
battery=yes => allow
policy { min_battery_percent = 0 }
battery=yes pct=0 => allow
policy { pause_on_low_power = false }
low_power=yes => allow
policy { pause_on_thermal = \"never\" }
thermal=critical => allow
policy { pause_on_thermal = \"fair\" }
=> allow
thermal=nominal => allow
thermal=fair => wait thermal_pressure
policy { pause_on_thermal = \"critical\" }
thermal=serious => allow
thermal=critical => wait thermal_pressure
policy { only_when_idle = true }
idle=no => wait user_active
idle=yes => allow
=> allow
policy { bandwidth_cap_bytes_per_s = 1000000 }
net=online metered=no => allow cap=1000000
idle=no => allow cap=1000000
",
    );
}

#[test]
fn wifi_allow_and_deny_lists() {
    check(
        "\
policy { wifi_allow = [\"Home\", \"Office\"] }
net=online ssid=Home => allow
net=online ssid=Office => allow
net=online ssid=Cafe => wait wifi_not_allowed
net=online ssid=home => wait wifi_not_allowed
# Wired or SSID unknown: the allow list restricts Wi-Fi only.
net=online => allow
net=unknown => allow
policy { wifi_deny = [\"Phone Hotspot\"] }
net=online ssid=Cafe => allow
policy { wifi_deny = [\"Cafe\"] }
net=online ssid=Cafe => wait wifi_not_allowed
net=online ssid=Home => allow
policy { wifi_allow = [\"Cafe\"], wifi_deny = [\"Cafe\"] }
net=online ssid=Cafe => wait wifi_not_allowed
",
    );
}

#[test]
fn metered_small_files_allowance() {
    check(
        "\
policy { metered_small_files_allowance_bytes = 5000000 }
net=online metered=yes => allow max_file=5000000
net=online metered=yes size=5000000 => allow max_file=5000000
net=online metered=yes size=5000001 => wait waiting_for_unmetered_network
net=online metered=no size=90000000 => allow
net=online size=90000000 => allow
# The allowance does not lift the other rules.
net=online metered=yes battery=yes pct=10 size=1 => wait battery_below_threshold
policy { metered_small_files_allowance_bytes = 5000000, require_unmetered = false }
net=online metered=yes size=90000000 => allow
policy { metered_small_files_allowance_bytes = 5000000, bandwidth_cap_bytes_per_s = 250000 }
net=online metered=yes size=10 => allow cap=250000 max_file=5000000
",
    );
}

#[test]
fn priority_order_when_several_rules_are_violated() {
    check(
        "\
policy { require_charging = true, only_when_idle = true, wifi_allow = [\"Home\"], time_windows = [{ start = \"01:00\", end = \"02:00\" }] }
at mon 12:00
net=offline battery=yes pct=5 low_power=yes thermal=critical idle=no => wait waiting_for_network
net=online metered=yes ssid=Cafe battery=yes pct=5 low_power=yes thermal=critical idle=no => wait waiting_for_unmetered_network
net=online metered=no ssid=Cafe battery=yes pct=5 low_power=yes thermal=critical idle=no => wait wifi_not_allowed
net=online metered=no ssid=Home battery=yes pct=5 low_power=yes thermal=critical idle=no => wait on_battery
net=online metered=no ssid=Home battery=no pct=5 low_power=yes thermal=critical idle=no => wait low_power_mode
net=online metered=no ssid=Home battery=no pct=5 low_power=no thermal=critical idle=no => wait thermal_pressure
net=online metered=no ssid=Home battery=no pct=5 low_power=no thermal=nominal idle=no => wait user_active
net=online metered=no ssid=Home battery=no pct=5 low_power=no thermal=nominal idle=yes => wait outside_time_window
at mon 01:30
net=online metered=no ssid=Home battery=no pct=5 low_power=no thermal=nominal idle=yes => allow
policy { }
battery=yes pct=5 low_power=yes thermal=critical => wait battery_below_threshold
battery=yes pct=50 low_power=yes thermal=critical => wait low_power_mode
",
    );
}

#[test]
fn time_windows_plain_wrapping_and_by_day() {
    check(
        "\
policy { time_windows = [{ start = \"09:00\", end = \"17:00\" }] }
at mon 08:59
=> wait outside_time_window
hint => +0h01m (mon 09:00)
at mon 09:00
=> allow
hint => +8h00m (mon 17:00)
at mon 16:59
=> allow
at mon 17:00
=> wait outside_time_window
hint => +16h00m (tue 09:00)
# Past midnight: [22:00, 06:00).
policy { time_windows = [{ start = \"22:00\", end = \"06:00\" }] }
at wed 21:59
=> wait outside_time_window
at wed 22:00
=> allow
hint => +8h00m (thu 06:00)
at thu 00:00
=> allow
at thu 05:59
=> allow
at thu 06:00
=> wait outside_time_window
hint => +16h00m (thu 22:00)
# Days name the day a window starts on: Friday night covers Saturday morning.
policy { time_windows = [{ start = \"22:00\", end = \"06:00\", days = [\"fri\"] }] }
at fri 21:00
=> wait outside_time_window
hint => +1h00m (fri 22:00)
at sat 05:00
=> allow
hint => +1h00m (sat 06:00)
at sat 23:00
=> wait outside_time_window
hint => +143h00m (fri 22:00)
# Sunday night wraps into Monday morning, across the end of the week.
policy { time_windows = [{ start = \"23:00\", end = \"01:00\", days = [\"sunday\"] }] }
at mon 00:30
=> allow
hint => +0h30m (mon 01:00)
at sun 22:00
=> wait outside_time_window
hint => +1h00m (sun 23:00)
# Several windows: inside any of them; adjacent windows do not flip the rule.
policy { time_windows = [{ start = \"00:00\", end = \"07:00\" }, { start = \"07:00\", end = \"08:00\" }, { start = \"20:00\", end = \"24:00\", days = [\"sat\", \"sun\"] }] }
at tue 06:30
=> allow
hint => +1h30m (tue 08:00)
at tue 21:00
=> wait outside_time_window
hint => +3h00m (wed 00:00)
at sat 21:00
=> allow
hint => +11h00m (sun 08:00)
# Windows that cover the whole week never flip; no windows never flip.
policy { time_windows = [{ start = \"00:00\", end = \"24:00\" }] }
=> allow
hint => none
policy { }
hint => none
# The time rule comes after every condition rule.
policy { time_windows = [{ start = \"01:00\", end = \"02:00\" }] }
at mon 12:00
net=offline => wait waiting_for_network
thermal=serious => wait thermal_pressure
",
    );
}

#[test]
fn policy_deserialization_refuses_bad_input() {
    let bad = [
        "{ require_unmetred = true }",
        "{ time_windows = [{ start = \"10:00\", end = \"10:00\" }] }",
        "{ time_windows = [{ start = \"25:00\", end = \"10:00\" }] }",
        "{ time_windows = [{ start = \"9:5\", end = \"10:00\" }] }",
        "{ time_windows = [{ start = \"24:00\", end = \"10:00\" }] }",
        "{ time_windows = [{ start = \"10:00\", end = \"11:00\", days = [\"someday\"] }] }",
        "{ pause_on_thermal = \"warm\" }",
        "{ min_battery_percent = 300 }",
    ];
    for inline in bad {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Wrap {
            p: Policy,
        }
        assert!(
            toml::from_str::<Wrap>(&format!("p = {inline}")).is_err(),
            "accepted {inline}"
        );
    }
    assert_eq!(parse_policy("{}"), Policy::default());
}

#[test]
fn overrides_layer_over_defaults() {
    use ferry_core::policy::PolicyOverrides;
    let global: PolicyOverrides =
        toml::from_str("require_charging = true\nbandwidth_cap_bytes_per_s = 100\n").unwrap();
    let extension: PolicyOverrides =
        toml::from_str("bandwidth_cap_bytes_per_s = 0\nmin_battery_percent = 80\n").unwrap();
    let p = Policy::default().with(&global).with(&extension);
    let expected = Policy {
        require_charging: true,
        min_battery_percent: 80,
        bandwidth_cap_bytes_per_s: None,
        ..Policy::default()
    };
    assert_eq!(p, expected);
    assert_eq!(
        Policy::default().with(&global).bandwidth_cap_bytes_per_s,
        Some(100)
    );
}

#[test]
fn reasons_and_decisions_serialize_snake_case() {
    use ferry_core::policy::{WaitReason, most_pressing};
    let j = |v: &dyn erased::Ser| v.json();
    assert_eq!(j(&WaitReason::UserActive), r#""user_active""#);
    assert_eq!(
        j(&WaitReason::DestinationBackoffUntil(1_767_225_600_000)),
        r#"{"destination_backoff_until":1767225600000}"#
    );
    assert_eq!(
        j(&Decision::Wait(WaitReason::WaitingForUnmeteredNetwork)),
        r#"{"wait":"waiting_for_unmetered_network"}"#
    );
    assert_eq!(
        j(&Decision::Allow {
            bandwidth_cap_bytes_per_s: Some(5),
            max_file_bytes: None
        }),
        r#"{"allow":{"bandwidth_cap_bytes_per_s":5,"max_file_bytes":null}}"#
    );
    let back: WaitReason = serde_json::from_str(r#"{"extension_backoff_until":7}"#).unwrap();
    assert_eq!(back, WaitReason::ExtensionBackoffUntil(7));
    for r in [
        WaitReason::ExtensionDisabled,
        WaitReason::OutsideTimeWindow,
        WaitReason::JobLimitReached,
        WaitReason::ExtensionBackoffUntil(1),
    ] {
        assert!(j(&r).contains(r.code()));
    }

    assert_eq!(
        most_pressing([
            WaitReason::DestinationBackoffUntil(5),
            WaitReason::OutsideTimeWindow,
            WaitReason::DestinationBackoffUntil(9),
        ]),
        Some(WaitReason::OutsideTimeWindow)
    );
    assert_eq!(
        most_pressing([
            WaitReason::DestinationBackoffUntil(5),
            WaitReason::DestinationBackoffUntil(9),
            WaitReason::JobLimitReached,
        ]),
        Some(WaitReason::DestinationBackoffUntil(9))
    );
    assert_eq!(
        most_pressing([WaitReason::UserActive, WaitReason::ExtensionDisabled]),
        Some(WaitReason::ExtensionDisabled)
    );
    assert_eq!(most_pressing([]), None);
    let _ = Thermal::Unknown;
}

mod erased {
    pub trait Ser {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Ser for T {
        fn json(&self) -> String {
            serde_json::to_string(self).unwrap()
        }
    }
}

#[test]
fn conditions_serialize_for_the_cli() {
    let (c, _) = parse_conditions(
        "net=online metered=yes ssid=Home battery=yes pct=40 idle=no thermal=fair",
    );
    let json = serde_json::to_string(&c).unwrap();
    assert_eq!(
        json,
        r#"{"network":{"state":"online","metered":true,"wifi_ssid":"Home"},"power":{"on_battery":true,"battery_percent":40,"low_power":null},"user_idle":false,"thermal":"fair"}"#
    );
    assert_eq!(serde_json::from_str::<Conditions>(&json).unwrap(), c);
    let unknown = serde_json::to_string(&Conditions::default()).unwrap();
    assert_eq!(
        unknown,
        r#"{"network":{"state":"unknown"},"power":{"on_battery":null,"battery_percent":null,"low_power":null},"user_idle":null,"thermal":"unknown"}"#
    );
}
