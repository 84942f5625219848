//! A snapshot of the device's conditions, and the moment a decision is made at.
//!
//! Every field can be unknown: an observer whose source is absent (no NetworkManager on a
//! server, no battery on a desktop, no thermal zones in a VM) reports `None` / `Unknown`, and the
//! policy treats an unknown value as permissive for the rule that reads it (see `policy.rs`).
//! The snapshot is plain data; `ferry-conditions` fills it in from D-Bus and sysfs.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What the device knows of its conditions at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Conditions {
    pub network: Network,
    pub power: Power,
    /// `Some(true)` when the user's session is idle (logind's `IdleHint`).
    pub user_idle: Option<bool>,
    pub thermal: Thermal,
}

/// Network reachability.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Network {
    /// No source says anything (no NetworkManager). Treated as online by the policy.
    #[default]
    Unknown,
    /// Positively known to have no connection.
    Offline,
    Online {
        /// Whether the primary connection is metered; `None` when the source cannot tell.
        metered: Option<bool>,
        /// The Wi-Fi network's name when the primary connection is Wi-Fi; `None` for wired
        /// connections and when unknown. SSIDs are bytes; non-UTF-8 ones are lossily converted.
        wifi_ssid: Option<String>,
    },
}

/// Power supply state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Power {
    /// `Some(true)` when running from the battery (not charging).
    pub on_battery: Option<bool>,
    /// Charge of the system battery, 0..=100.
    pub battery_percent: Option<u8>,
    /// `Some(true)` when the system is in a low-power / power-saver mode.
    pub low_power: Option<bool>,
}

/// Thermal pressure, after Apple's `ProcessInfo.ThermalState`. Ordered from cool to hot;
/// `Unknown` sorts first and never counts as pressure.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Thermal {
    #[default]
    Unknown,
    Nominal,
    Fair,
    Serious,
    Critical,
}

/// Day of the week, Monday first (ISO 8601).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Weekday {
    #[serde(alias = "monday")]
    Mon,
    #[serde(alias = "tuesday")]
    Tue,
    #[serde(alias = "wednesday")]
    Wed,
    #[serde(alias = "thursday")]
    Thu,
    #[serde(alias = "friday")]
    Fri,
    #[serde(alias = "saturday")]
    Sat,
    #[serde(alias = "sunday")]
    Sun,
}

impl Weekday {
    pub const ALL: [Weekday; 7] = [
        Weekday::Mon,
        Weekday::Tue,
        Weekday::Wed,
        Weekday::Thu,
        Weekday::Fri,
        Weekday::Sat,
        Weekday::Sun,
    ];

    /// 0 for Monday .. 6 for Sunday.
    pub fn index(self) -> u8 {
        self as u8
    }

    /// The day for an index taken modulo 7 (0 is Monday).
    pub fn from_index(index: u32) -> Weekday {
        Self::ALL[(index % 7) as usize]
    }

    pub fn name(self) -> &'static str {
        ["mon", "tue", "wed", "thu", "fri", "sat", "sun"][self as usize]
    }
}

/// Local wall-clock time: the day and the minute since local midnight (0..1440).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LocalTime {
    pub weekday: Weekday,
    pub minute_of_day: u16,
}

impl LocalTime {
    pub const MINUTES_PER_DAY: u16 = 1440;

    /// `None` unless `hour < 24` and `minute < 60`.
    pub fn new(weekday: Weekday, hour: u8, minute: u8) -> Option<LocalTime> {
        (hour < 24 && minute < 60).then(|| LocalTime {
            weekday,
            minute_of_day: u16::from(hour) * 60 + u16::from(minute),
        })
    }

    /// Minutes since Monday 00:00, 0..10080.
    pub fn minute_of_week(self) -> u32 {
        u32::from(self.weekday.index()) * 1440
            + u32::from(self.minute_of_day % Self::MINUTES_PER_DAY)
    }
}

impl fmt::Display for LocalTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.minute_of_day % Self::MINUTES_PER_DAY;
        write!(f, "{} {:02}:{:02}", self.weekday.name(), m / 60, m % 60)
    }
}

/// The moment a decision is made at, as the caller read it from its clock: absolute time for
/// backoffs and hints, local wall-clock time for time windows. Core never reads a clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Now {
    /// Milliseconds since the Unix epoch (UTC).
    pub unix_ms: u64,
    /// The local wall-clock time at `unix_ms`.
    pub local: LocalTime,
}

fn tri(v: Option<bool>, yes: &str, no: &str) -> String {
    match v {
        Some(true) => yes.to_owned(),
        Some(false) => no.to_owned(),
        None => "unknown".to_owned(),
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Network::Unknown => f.write_str("unknown"),
            Network::Offline => f.write_str("offline"),
            Network::Online { metered, wifi_ssid } => {
                write!(f, "online, {}", tri(*metered, "metered", "unmetered"))?;
                match wifi_ssid {
                    Some(ssid) => write!(f, ", Wi-Fi {ssid:?}"),
                    None => f.write_str(", not Wi-Fi or SSID unknown"),
                }
            }
        }
    }
}

impl fmt::Display for Power {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = tri(self.on_battery, "on battery", "on mains power");
        let level = match self.battery_percent {
            Some(p) => format!("{p}%"),
            None => "unknown".to_owned(),
        };
        let low = tri(self.low_power, "on", "off");
        write!(f, "{source}, battery {level}, low-power mode {low}")
    }
}

impl fmt::Display for Thermal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Thermal::Unknown => "unknown",
            Thermal::Nominal => "nominal",
            Thermal::Fair => "fair",
            Thermal::Serious => "serious",
            Thermal::Critical => "critical",
        })
    }
}

impl fmt::Display for Conditions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "network:  {}", self.network)?;
        writeln!(f, "power:    {}", self.power)?;
        writeln!(f, "user:     {}", tri(self.user_idle, "idle", "active"))?;
        write!(f, "thermal:  {}", self.thermal)
    }
}
