//! When an extension's uploads may run: a per-extension [`Policy`] applied to a [`Conditions`]
//! snapshot gives one [`Decision`], either allow (with a bandwidth cap) or wait for exactly one
//! enumerated [`WaitReason`].
//!
//! # Rules, in priority order
//! When several rules are violated, the reason reported is the first one in this list (the
//! declaration order of [`WaitReason`]), so "why is nothing moving" has one stable answer. The
//! order goes from the most fundamental (nothing can fix it but a network) to the most
//! transient (the clock will fix it).
//!
//! 0. `extension_disabled` (scheduler): the user has not enabled the extension.
//! 1. `waiting_for_network`: the network is positively known to be offline.
//! 2. `waiting_for_unmetered_network`: `require_unmetered` and the connection is metered. With
//!    `metered_small_files_allowance_bytes = N` this is not a wait: the decision is
//!    `Allow { max_file_bytes: Some(N) }` and only larger files wait ([`decide_for_file`]).
//! 3. `wifi_not_allowed`: the Wi-Fi SSID is in `wifi_deny`, or `wifi_allow` is not empty and
//!    the SSID is not in it. The lists restrict Wi-Fi only: a wired connection, or one whose
//!    SSID is unknown, is not blocked by them.
//! 4. `on_battery`: `require_charging` and the device runs from its battery.
//! 5. `battery_below_threshold`: on battery and the charge is below `min_battery_percent`
//!    ("charging, or battery ≥ 30%"). `min_battery_percent = 0` turns the rule off.
//! 6. `low_power_mode`: `pause_on_low_power` and the system is in power-saver mode.
//! 7. `thermal_pressure`: the thermal state is at or above `pause_on_thermal`
//!    (`serious` by default; `never` turns the rule off).
//! 8. `user_active`: `only_when_idle` and the user is positively active.
//! 9. `outside_time_window`: `time_windows` is not empty and the local time is in none of them.
//! 10. `extension_backoff_until(t)`, `destination_backoff_until(t)`, `job_limit_reached`
//!     (scheduler): added by the scheduler, which combines reasons with [`most_pressing`].
//!
//! # Unknown conditions
//! A condition whose source is absent never blocks: each rule that reads an unknown value
//! passes. In particular `Network::Unknown` counts as online: NetworkManager is often absent on
//! servers and in containers, where the network is almost always up; a transfer that cannot
//! connect fails and is retried by the transfer engine's own backoff. Only `Network::Offline`,
//! which an observer reports when its source positively says so, makes uploads wait. So
//! "unknown" is never a reason.
//!
//! # Time windows
//! A window is `[start, end)` in local wall-clock minutes. `end <= start` wraps past midnight
//! (`22:00`–`06:00`). `days` names the days the window *starts* on (Friday `22:00`–`06:00`
//! covers Saturday morning); empty means every day. [`next_change_hint`] gives the instant the
//! time-window rule next flips, so a scheduler can sleep until a window opens (or closes)
//! instead of polling. The hint assumes the UTC offset stays as it is now: across a daylight
//! saving change it can be an hour off, so a scheduler should also re-decide when it sees the
//! wall clock jump.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::conditions::{Conditions, LocalTime, Network, Now, Thermal, Weekday};

/// The upload policy of one extension: Ferry's defaults with the user's overrides applied.
/// Deserializes from a table where every field is optional and unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// Wait while the connection is metered (default true).
    pub require_unmetered: bool,
    /// On a metered connection, files of at most this many bytes may still go.
    pub metered_small_files_allowance_bytes: Option<u64>,
    /// When not empty, Wi-Fi uploads only on these SSIDs.
    pub wifi_allow: Vec<String>,
    /// Never upload over these SSIDs.
    pub wifi_deny: Vec<String>,
    /// Wait unless on mains power (default false).
    pub require_charging: bool,
    /// On battery, wait below this charge (default 30; 0 turns the rule off).
    pub min_battery_percent: u8,
    /// Wait while the system is in power-saver mode (default true).
    pub pause_on_low_power: bool,
    /// Wait at or above this thermal state (default `serious`).
    pub pause_on_thermal: ThermalPause,
    /// Wait while the user is active (default false).
    pub only_when_idle: bool,
    /// When not empty, upload only inside one of these local-time windows.
    pub time_windows: Vec<TimeWindow>,
    /// Upper bound on this extension's upload rate.
    pub bandwidth_cap_bytes_per_s: Option<u64>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            require_unmetered: true,
            metered_small_files_allowance_bytes: None,
            wifi_allow: Vec::new(),
            wifi_deny: Vec::new(),
            require_charging: false,
            min_battery_percent: 30,
            pause_on_low_power: true,
            pause_on_thermal: ThermalPause::Serious,
            only_when_idle: false,
            time_windows: Vec::new(),
            bandwidth_cap_bytes_per_s: None,
        }
    }
}

/// A layer of user settings over a [`Policy`] (global settings, then per-extension ones): each
/// field that is present replaces the policy's. For the optional byte counts, `0` removes the
/// value set by a lower layer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyOverrides {
    pub require_unmetered: Option<bool>,
    pub metered_small_files_allowance_bytes: Option<u64>,
    pub wifi_allow: Option<Vec<String>>,
    pub wifi_deny: Option<Vec<String>>,
    pub require_charging: Option<bool>,
    pub min_battery_percent: Option<u8>,
    pub pause_on_low_power: Option<bool>,
    pub pause_on_thermal: Option<ThermalPause>,
    pub only_when_idle: Option<bool>,
    pub time_windows: Option<Vec<TimeWindow>>,
    pub bandwidth_cap_bytes_per_s: Option<u64>,
}

impl Policy {
    /// This policy with `overrides` laid over it.
    pub fn with(mut self, overrides: &PolicyOverrides) -> Policy {
        let o = overrides.clone();
        let nonzero = |v: u64| (v != 0).then_some(v);
        if let Some(v) = o.require_unmetered {
            self.require_unmetered = v;
        }
        if let Some(v) = o.metered_small_files_allowance_bytes {
            self.metered_small_files_allowance_bytes = nonzero(v);
        }
        if let Some(v) = o.wifi_allow {
            self.wifi_allow = v;
        }
        if let Some(v) = o.wifi_deny {
            self.wifi_deny = v;
        }
        if let Some(v) = o.require_charging {
            self.require_charging = v;
        }
        if let Some(v) = o.min_battery_percent {
            self.min_battery_percent = v;
        }
        if let Some(v) = o.pause_on_low_power {
            self.pause_on_low_power = v;
        }
        if let Some(v) = o.pause_on_thermal {
            self.pause_on_thermal = v;
        }
        if let Some(v) = o.only_when_idle {
            self.only_when_idle = v;
        }
        if let Some(v) = o.time_windows {
            self.time_windows = v;
        }
        if let Some(v) = o.bandwidth_cap_bytes_per_s {
            self.bandwidth_cap_bytes_per_s = nonzero(v);
        }
        self
    }
}

/// The thermal state at which uploads pause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThermalPause {
    Never,
    Fair,
    Serious,
    Critical,
}

impl ThermalPause {
    fn pauses_at(self, thermal: Thermal) -> bool {
        let threshold = match self {
            ThermalPause::Never => return false,
            ThermalPause::Fair => Thermal::Fair,
            ThermalPause::Serious => Thermal::Serious,
            ThermalPause::Critical => Thermal::Critical,
        };
        // `Unknown` sorts below every level, so it never pauses.
        thermal >= threshold
    }
}

/// A local wall-clock minute, written `"HH:MM"` (`"24:00"` is allowed as an end).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClockTime(u16);

impl ClockTime {
    /// `None` past `24:00`.
    pub fn new(hour: u8, minute: u8) -> Option<ClockTime> {
        let m = u16::from(hour) * 60 + u16::from(minute);
        (minute < 60 && m <= 1440).then_some(ClockTime(m))
    }

    pub fn minutes(self) -> u16 {
        self.0
    }
}

impl fmt::Display for ClockTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.0 / 60, self.0 % 60)
    }
}

impl std::str::FromStr for ClockTime {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("invalid time {s:?}: expected HH:MM between 00:00 and 24:00");
        let (h, m) = s.split_once(':').ok_or_else(bad)?;
        if h.is_empty() || h.len() > 2 || m.len() != 2 {
            return Err(bad());
        }
        let h: u8 = h.parse().map_err(|_| bad())?;
        let m: u8 = m.parse().map_err(|_| bad())?;
        ClockTime::new(h, m).ok_or_else(bad)
    }
}

impl Serialize for ClockTime {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ClockTime {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `[start, end)` in local time on `days` (the days the window starts on; empty: every day).
/// `end <= start` wraps past midnight; `start == end` is refused (write `00:00`–`24:00` for a
/// whole day).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawTimeWindow", into = "RawTimeWindow")]
pub struct TimeWindow {
    start: ClockTime,
    end: ClockTime,
    days: Vec<Weekday>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeWindow {
    start: ClockTime,
    end: ClockTime,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    days: Vec<Weekday>,
}

impl TryFrom<RawTimeWindow> for TimeWindow {
    type Error = String;

    fn try_from(raw: RawTimeWindow) -> Result<Self, String> {
        TimeWindow::new(raw.start, raw.end, raw.days)
    }
}

impl From<TimeWindow> for RawTimeWindow {
    fn from(w: TimeWindow) -> Self {
        RawTimeWindow {
            start: w.start,
            end: w.end,
            days: w.days,
        }
    }
}

const MINUTES_PER_WEEK: u32 = 7 * 1440;

impl TimeWindow {
    pub fn new(start: ClockTime, end: ClockTime, days: Vec<Weekday>) -> Result<Self, String> {
        if start == end {
            return Err(format!(
                "empty time window {start}-{end}: write 00:00-24:00 for a whole day"
            ));
        }
        if start.0 == 1440 {
            return Err("a time window cannot start at 24:00".to_owned());
        }
        let mut days = days;
        days.sort();
        days.dedup();
        Ok(TimeWindow { start, end, days })
    }

    pub fn start(&self) -> ClockTime {
        self.start
    }

    pub fn end(&self) -> ClockTime {
        self.end
    }

    pub fn days(&self) -> &[Weekday] {
        &self.days
    }

    fn length_minutes(&self) -> u32 {
        let (s, e) = (u32::from(self.start.0), u32::from(self.end.0));
        if e > s { e - s } else { e + 1440 - s }
    }

    /// Whether the minute of the week (0 = Monday 00:00) lies in this window.
    fn contains_minute_of_week(&self, minute: u32) -> bool {
        let days: &[Weekday] = if self.days.is_empty() {
            &Weekday::ALL
        } else {
            &self.days
        };
        days.iter().any(|d| {
            let start = u32::from(d.index()) * 1440 + u32::from(self.start.0);
            (minute + MINUTES_PER_WEEK - start) % MINUTES_PER_WEEK < self.length_minutes()
        })
    }

    pub fn contains(&self, t: LocalTime) -> bool {
        self.contains_minute_of_week(t.minute_of_week())
    }
}

/// Why uploads wait. Exactly one is reported; the declaration order is the priority order
/// (see the module documentation). Serializes as snake_case, the `_until` ones with their
/// instant in milliseconds since the Unix epoch: `"user_active"`,
/// `{"destination_backoff_until": 1767225600000}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitReason {
    ExtensionDisabled,
    WaitingForNetwork,
    WaitingForUnmeteredNetwork,
    WifiNotAllowed,
    OnBattery,
    BatteryBelowThreshold,
    LowPowerMode,
    ThermalPressure,
    UserActive,
    OutsideTimeWindow,
    ExtensionBackoffUntil(u64),
    DestinationBackoffUntil(u64),
    JobLimitReached,
}

impl WaitReason {
    /// Position in the priority order: lower is reported first.
    pub fn rank(self) -> u8 {
        match self {
            WaitReason::ExtensionDisabled => 0,
            WaitReason::WaitingForNetwork => 1,
            WaitReason::WaitingForUnmeteredNetwork => 2,
            WaitReason::WifiNotAllowed => 3,
            WaitReason::OnBattery => 4,
            WaitReason::BatteryBelowThreshold => 5,
            WaitReason::LowPowerMode => 6,
            WaitReason::ThermalPressure => 7,
            WaitReason::UserActive => 8,
            WaitReason::OutsideTimeWindow => 9,
            WaitReason::ExtensionBackoffUntil(_) => 10,
            WaitReason::DestinationBackoffUntil(_) => 11,
            WaitReason::JobLimitReached => 12,
        }
    }

    /// The stable snake_case name, as serialized.
    pub fn code(self) -> &'static str {
        match self {
            WaitReason::ExtensionDisabled => "extension_disabled",
            WaitReason::WaitingForNetwork => "waiting_for_network",
            WaitReason::WaitingForUnmeteredNetwork => "waiting_for_unmetered_network",
            WaitReason::WifiNotAllowed => "wifi_not_allowed",
            WaitReason::OnBattery => "on_battery",
            WaitReason::BatteryBelowThreshold => "battery_below_threshold",
            WaitReason::LowPowerMode => "low_power_mode",
            WaitReason::ThermalPressure => "thermal_pressure",
            WaitReason::UserActive => "user_active",
            WaitReason::OutsideTimeWindow => "outside_time_window",
            WaitReason::ExtensionBackoffUntil(_) => "extension_backoff_until",
            WaitReason::DestinationBackoffUntil(_) => "destination_backoff_until",
            WaitReason::JobLimitReached => "job_limit_reached",
        }
    }
}

/// The reason to report among several: the lowest rank; between two backoffs of the same kind,
/// the one that ends last (it is the one that binds).
pub fn most_pressing(reasons: impl IntoIterator<Item = WaitReason>) -> Option<WaitReason> {
    reasons.into_iter().reduce(|a, b| {
        use WaitReason::{DestinationBackoffUntil as D, ExtensionBackoffUntil as E};
        match (a, b) {
            (E(x), E(y)) => E(x.max(y)),
            (D(x), D(y)) => D(x.max(y)),
            _ if b.rank() < a.rank() => b,
            _ => a,
        }
    })
}

impl fmt::Display for WaitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitReason::ExtensionDisabled => f.write_str("the extension is not enabled"),
            WaitReason::WaitingForNetwork => f.write_str("waiting for a network connection"),
            WaitReason::WaitingForUnmeteredNetwork => {
                f.write_str("the connection is metered; waiting for an unmetered one")
            }
            WaitReason::WifiNotAllowed => f.write_str("this Wi-Fi network is not allowed"),
            WaitReason::OnBattery => f.write_str("waiting for the charger (charging required)"),
            WaitReason::BatteryBelowThreshold => {
                f.write_str("the battery is below the minimum level")
            }
            WaitReason::LowPowerMode => f.write_str("the system is in low-power mode"),
            WaitReason::ThermalPressure => f.write_str("the device is too hot"),
            WaitReason::UserActive => f.write_str("waiting for the user to be idle"),
            WaitReason::OutsideTimeWindow => f.write_str("outside the allowed hours"),
            WaitReason::ExtensionBackoffUntil(t) => {
                write!(f, "the extension is backing off until {t} (Unix ms)")
            }
            WaitReason::DestinationBackoffUntil(t) => {
                write!(f, "the destination is backing off until {t} (Unix ms)")
            }
            WaitReason::JobLimitReached => f.write_str("the extension's job limit is reached"),
        }
    }
}

/// What the policy makes of the conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allow {
        /// The upload rate not to exceed, if any.
        bandwidth_cap_bytes_per_s: Option<u64>,
        /// Only files of at most this size may go (a metered network's small-file allowance).
        max_file_bytes: Option<u64>,
    },
    Wait(WaitReason),
}

impl Decision {
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }

    pub fn wait_reason(&self) -> Option<WaitReason> {
        match self {
            Decision::Allow { .. } => None,
            Decision::Wait(r) => Some(*r),
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Allow {
                bandwidth_cap_bytes_per_s,
                max_file_bytes,
            } => {
                f.write_str("uploads may run")?;
                if let Some(cap) = bandwidth_cap_bytes_per_s {
                    write!(f, ", at most {cap} bytes/s")?;
                }
                if let Some(max) = max_file_bytes {
                    write!(f, ", only files up to {max} bytes (metered connection)")?;
                }
                Ok(())
            }
            Decision::Wait(reason) => write!(f, "waiting: {reason} ({})", reason.code()),
        }
    }
}

/// The decision for an extension's uploads as a whole. Total and deterministic: the same
/// inputs give the same decision, and no input is refused.
pub fn decide(policy: &Policy, conditions: &Conditions, now: &Now) -> Decision {
    let mut max_file_bytes = None;

    // 1. Network. Unknown counts as online (see the module documentation).
    let (metered, ssid) = match &conditions.network {
        Network::Offline => return Decision::Wait(WaitReason::WaitingForNetwork),
        Network::Unknown => (None, None),
        Network::Online { metered, wifi_ssid } => (*metered, wifi_ssid.as_deref()),
    };

    // 2. Metered.
    if policy.require_unmetered && metered == Some(true) {
        match policy.metered_small_files_allowance_bytes {
            Some(n) => max_file_bytes = Some(n),
            None => return Decision::Wait(WaitReason::WaitingForUnmeteredNetwork),
        }
    }

    // 3. Wi-Fi names.
    if let Some(ssid) = ssid {
        let denied = policy.wifi_deny.iter().any(|s| s == ssid);
        let not_allowed =
            !policy.wifi_allow.is_empty() && !policy.wifi_allow.iter().any(|s| s == ssid);
        if denied || not_allowed {
            return Decision::Wait(WaitReason::WifiNotAllowed);
        }
    }

    // 4, 5. Power source and charge.
    let power = &conditions.power;
    if power.on_battery == Some(true) {
        if policy.require_charging {
            return Decision::Wait(WaitReason::OnBattery);
        }
        if let Some(pct) = power.battery_percent
            && pct < policy.min_battery_percent
        {
            return Decision::Wait(WaitReason::BatteryBelowThreshold);
        }
    }

    // 6. Low-power mode.
    if policy.pause_on_low_power && power.low_power == Some(true) {
        return Decision::Wait(WaitReason::LowPowerMode);
    }

    // 7. Heat.
    if policy.pause_on_thermal.pauses_at(conditions.thermal) {
        return Decision::Wait(WaitReason::ThermalPressure);
    }

    // 8. User activity.
    if policy.only_when_idle && conditions.user_idle == Some(false) {
        return Decision::Wait(WaitReason::UserActive);
    }

    // 9. Time windows.
    if !in_time_window(policy, now.local) {
        return Decision::Wait(WaitReason::OutsideTimeWindow);
    }

    Decision::Allow {
        bandwidth_cap_bytes_per_s: policy.bandwidth_cap_bytes_per_s,
        max_file_bytes,
    }
}

/// The decision for one file of `size_bytes`: as [`decide`], except that a file larger than a
/// metered network's small-file allowance waits for an unmetered network.
pub fn decide_for_file(
    policy: &Policy,
    conditions: &Conditions,
    now: &Now,
    size_bytes: u64,
) -> Decision {
    match decide(policy, conditions, now) {
        Decision::Allow {
            max_file_bytes: Some(max),
            ..
        } if size_bytes > max => Decision::Wait(WaitReason::WaitingForUnmeteredNetwork),
        d => d,
    }
}

/// Whether the time-window rule passes at `local` (true when the policy has no windows).
pub fn in_time_window(policy: &Policy, local: LocalTime) -> bool {
    policy.time_windows.is_empty() || policy.time_windows.iter().any(|w| w.contains(local))
}

/// The next instant (Unix ms, on a minute boundary) at which the time-window rule flips, from
/// outside to inside a window or back; `None` when it never flips (no windows, or windows that
/// cover the whole week). Other rules depend on conditions that observers signal, so time is
/// the only input a scheduler needs a hint for.
pub fn next_change_hint(policy: &Policy, now: &Now) -> Option<u64> {
    if policy.time_windows.is_empty() {
        return None;
    }
    let inside = |m: u32| {
        policy
            .time_windows
            .iter()
            .any(|w| w.contains_minute_of_week(m))
    };
    let start = now.local.minute_of_week();
    let here = inside(start);
    let k = (1..=MINUTES_PER_WEEK).find(|k| inside((start + k) % MINUTES_PER_WEEK) != here)?;
    let minute_start_ms = now.unix_ms - now.unix_ms % 60_000;
    Some(minute_start_ms + u64::from(k) * 60_000)
}
