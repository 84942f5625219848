//! Property tests of the upload policy against an independent statement of its hard rules:
//! `decide` is total and deterministic, it allows exactly when no hard rule is violated, and
//! when it waits it reports the most pressing violated rule. `next_change_hint` points at the
//! first minute where the time-window rule flips.

use ferry_core::conditions::{Conditions, LocalTime, Network, Now, Power, Thermal, Weekday};
use ferry_core::policy::{
    ClockTime, Decision, Policy, ThermalPause, TimeWindow, WaitReason, decide, decide_for_file,
    in_time_window, most_pressing, next_change_hint,
};
use proptest::prelude::*;

const SSIDS: [&str; 3] = ["Home", "Cafe", "Office"];

fn tri() -> impl Strategy<Value = Option<bool>> {
    prop_oneof![Just(None), Just(Some(true)), Just(Some(false))]
}

fn ssid_list() -> impl Strategy<Value = Vec<String>> {
    proptest::sample::subsequence(SSIDS.to_vec(), 0..=2)
        .prop_map(|v| v.into_iter().map(String::from).collect())
}

/// Biased to the boundaries the default threshold sits on.
fn percent() -> impl Strategy<Value = u8> {
    prop_oneof![
        Just(0u8),
        Just(29),
        Just(30),
        Just(31),
        Just(100),
        0u8..=100
    ]
}

fn weekday() -> impl Strategy<Value = Weekday> {
    (0u32..7).prop_map(Weekday::from_index)
}

fn window() -> impl Strategy<Value = TimeWindow> {
    (
        0u16..1440,
        1u16..=1440,
        proptest::collection::vec(weekday(), 0..3),
    )
        .prop_filter_map("empty window", |(s, e, days)| {
            let c = |m: u16| ClockTime::new((m / 60) as u8, (m % 60) as u8).unwrap();
            TimeWindow::new(c(s), c(e), days).ok()
        })
}

fn thermal() -> impl Strategy<Value = Thermal> {
    prop_oneof![
        Just(Thermal::Unknown),
        Just(Thermal::Nominal),
        Just(Thermal::Fair),
        Just(Thermal::Serious),
        Just(Thermal::Critical)
    ]
}

fn policy() -> impl Strategy<Value = Policy> {
    (
        (
            any::<bool>(),
            proptest::option::of(0u64..10_000),
            ssid_list(),
            ssid_list(),
        ),
        (any::<bool>(), percent(), any::<bool>()),
        prop_oneof![
            Just(ThermalPause::Never),
            Just(ThermalPause::Fair),
            Just(ThermalPause::Serious),
            Just(ThermalPause::Critical)
        ],
        any::<bool>(),
        proptest::collection::vec(window(), 0..3),
        proptest::option::of(1u64..1_000_000),
    )
        .prop_map(
            |((unmetered, allowance, allow, deny), (charging, min_pct, low), th, idle, w, cap)| {
                Policy {
                    require_unmetered: unmetered,
                    metered_small_files_allowance_bytes: allowance,
                    wifi_allow: allow,
                    wifi_deny: deny,
                    require_charging: charging,
                    min_battery_percent: min_pct,
                    pause_on_low_power: low,
                    pause_on_thermal: th,
                    only_when_idle: idle,
                    time_windows: w,
                    bandwidth_cap_bytes_per_s: cap,
                }
            },
        )
}

fn conditions() -> impl Strategy<Value = Conditions> {
    let network = prop_oneof![
        Just(Network::Unknown),
        Just(Network::Offline),
        (
            tri(),
            proptest::option::of(proptest::sample::select(SSIDS.to_vec()))
        )
            .prop_map(|(metered, ssid)| Network::Online {
                metered,
                wifi_ssid: ssid.map(String::from)
            }),
    ];
    (
        network,
        tri(),
        proptest::option::of(percent()),
        tri(),
        tri(),
        thermal(),
    )
        .prop_map(
            |(network, on_battery, pct, low, idle, thermal)| Conditions {
                network,
                power: Power {
                    on_battery,
                    battery_percent: pct,
                    low_power: low,
                },
                user_idle: idle,
                thermal,
            },
        )
}

fn now() -> impl Strategy<Value = Now> {
    (weekday(), 0u16..1440, 0u64..60_000).prop_map(|(d, m, sub_minute_ms)| Now {
        unix_ms: 1_763_251_200_000
            + u64::from(d.index()) * 86_400_000
            + u64::from(m) * 60_000
            + sub_minute_ms,
        local: LocalTime {
            weekday: d,
            minute_of_day: m,
        },
    })
}

/// The time-window rule stated day by day, independently of the code under test.
fn inside_reference(windows: &[TimeWindow], minute_of_week: u32) -> bool {
    let day = minute_of_week / 1440;
    let m = (minute_of_week % 1440) as u16;
    let yesterday = Weekday::from_index(day + 6);
    let today = Weekday::from_index(day);
    windows.iter().any(|w| {
        let on = |d: Weekday| w.days().is_empty() || w.days().contains(&d);
        let (s, e) = (w.start().minutes(), w.end().minutes());
        if s < e {
            on(today) && s <= m && m < e
        } else {
            (on(today) && m >= s) || (on(yesterday) && m < e)
        }
    })
}

/// Every hard rule that `policy` and `conditions` violate, stated independently of `decide`.
fn violations(p: &Policy, c: &Conditions, now: &Now) -> Vec<WaitReason> {
    let mut v = Vec::new();
    if c.network == Network::Offline {
        v.push(WaitReason::WaitingForNetwork);
    }
    if let Network::Online {
        metered, wifi_ssid, ..
    } = &c.network
    {
        if p.require_unmetered
            && *metered == Some(true)
            && p.metered_small_files_allowance_bytes.is_none()
        {
            v.push(WaitReason::WaitingForUnmeteredNetwork);
        }
        if let Some(s) = wifi_ssid
            && (p.wifi_deny.contains(s) || (!p.wifi_allow.is_empty() && !p.wifi_allow.contains(s)))
        {
            v.push(WaitReason::WifiNotAllowed);
        }
    }
    if p.require_charging && c.power.on_battery == Some(true) {
        v.push(WaitReason::OnBattery);
    }
    if c.power.on_battery == Some(true)
        && c.power
            .battery_percent
            .is_some_and(|b| b < p.min_battery_percent)
    {
        v.push(WaitReason::BatteryBelowThreshold);
    }
    if p.pause_on_low_power && c.power.low_power == Some(true) {
        v.push(WaitReason::LowPowerMode);
    }
    let hot = match p.pause_on_thermal {
        ThermalPause::Never => false,
        ThermalPause::Fair => matches!(
            c.thermal,
            Thermal::Fair | Thermal::Serious | Thermal::Critical
        ),
        ThermalPause::Serious => matches!(c.thermal, Thermal::Serious | Thermal::Critical),
        ThermalPause::Critical => c.thermal == Thermal::Critical,
    };
    if hot {
        v.push(WaitReason::ThermalPressure);
    }
    if p.only_when_idle && c.user_idle == Some(false) {
        v.push(WaitReason::UserActive);
    }
    if !p.time_windows.is_empty() && !inside_reference(&p.time_windows, now.local.minute_of_week())
    {
        v.push(WaitReason::OutsideTimeWindow);
    }
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn decide_matches_the_rules(p in policy(), c in conditions(), now in now(), size in 0u64..20_000) {
        let d = decide(&p, &c, &now);
        prop_assert_eq!(d, decide(&p, &c, &now), "not deterministic");
        let v = violations(&p, &c, &now);
        match d {
            Decision::Allow { bandwidth_cap_bytes_per_s, max_file_bytes } => {
                prop_assert!(v.is_empty(), "allowed despite {:?}", v);
                prop_assert_eq!(bandwidth_cap_bytes_per_s, p.bandwidth_cap_bytes_per_s);
                let metered = matches!(c.network, Network::Online { metered: Some(true), .. });
                let expect_max = if metered && p.require_unmetered {
                    p.metered_small_files_allowance_bytes
                } else {
                    None
                };
                prop_assert_eq!(max_file_bytes, expect_max);
            }
            Decision::Wait(r) => {
                prop_assert_eq!(Some(r), most_pressing(v.iter().copied()), "violations {:?}", v);
            }
        }
        // Per file: a file over the metered allowance never goes.
        match decide_for_file(&p, &c, &now, size) {
            Decision::Allow { max_file_bytes, .. } => {
                prop_assert!(d.is_allow());
                prop_assert!(max_file_bytes.is_none_or(|m| size <= m));
            }
            Decision::Wait(r) => {
                let over = matches!(d, Decision::Allow { max_file_bytes: Some(m), .. } if size > m);
                prop_assert!(d == Decision::Wait(r) || (over && r == WaitReason::WaitingForUnmeteredNetwork));
            }
        }
        prop_assert_eq!(
            in_time_window(&p, now.local),
            p.time_windows.is_empty() || inside_reference(&p.time_windows, now.local.minute_of_week())
        );
    }

    #[test]
    fn hint_points_at_the_next_flip(p in policy(), now in now()) {
        let start = now.local.minute_of_week();
        let here = p.time_windows.is_empty() || inside_reference(&p.time_windows, start);
        let flip = (1..=7 * 1440u32).find(|k| {
            let m = (start + k) % (7 * 1440);
            (p.time_windows.is_empty() || inside_reference(&p.time_windows, m)) != here
        });
        let expected = flip.map(|k| now.unix_ms - now.unix_ms % 60_000 + u64::from(k) * 60_000);
        prop_assert_eq!(next_change_hint(&p, &now), expected);
    }
}
