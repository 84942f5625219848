//! Power and temperature from sysfs, under an injectable root (`/sys` on a real system).
//!
//! - `class/power_supply/*`: a `Mains` or `USB` supply with `online` = 1 means mains power; a
//!   `Battery` (not `scope` = `Device`, which is a mouse's or a headset's) gives `capacity`
//!   (percent) and `status` (`Discharging` means on battery).
//! - `class/thermal/thermal_zone*/temp` (millidegrees Celsius): the hottest zone decides, by
//!   fixed thresholds (below 70 °C nominal, below 80 °C fair, below 90 °C serious, critical from
//!   90 °C), raised to at least `serious` at or above a zone's `passive` or `hot` trip point and
//!   to `critical` at or above its `critical` trip point.
//!
//! sysfs attributes send no change notifications (inotify sees nothing: the values are made
//! when read), so the observer re-reads them on a slow timer (60 s by default) and only when
//! the first reading found something to watch.

use std::fs;
use std::path::Path;

use ferry_core::conditions::Thermal;

/// What sysfs says. Every field is `None` / `Unknown` when the files are absent or unreadable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SysfsReading {
    pub on_battery: Option<bool>,
    pub battery_percent: Option<u8>,
    pub thermal: Thermal,
    /// Whether any power supply or thermal zone exists (nothing to poll otherwise).
    pub found_anything: bool,
}

fn read_trimmed(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

fn read_number(path: &Path) -> Option<i64> {
    read_trimmed(path)?.parse().ok()
}

/// Reads power supplies and thermal zones under `root` (`/sys` on a real system).
pub fn read(root: &Path) -> SysfsReading {
    let mut reading = SysfsReading::default();
    read_power(root, &mut reading);
    read_thermal(root, &mut reading);
    reading
}

fn sorted_entries(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = match fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

fn read_power(root: &Path, reading: &mut SysfsReading) {
    let mut has_mains = false;
    let mut mains_online = false;
    let mut discharging = false;
    let mut charging_or_full = false;
    let mut has_battery = false;
    let mut capacities = Vec::new();
    for supply in sorted_entries(&root.join("class/power_supply")) {
        let Some(kind) = read_trimmed(&supply.join("type")) else {
            continue;
        };
        reading.found_anything = true;
        match kind.as_str() {
            "Mains" | "USB" => {
                if let Some(online) = read_number(&supply.join("online")) {
                    has_mains = true;
                    mains_online |= online == 1;
                }
            }
            "Battery" => {
                if read_trimmed(&supply.join("scope")).as_deref() == Some("Device") {
                    continue;
                }
                has_battery = true;
                if let Some(c) = read_number(&supply.join("capacity")) {
                    capacities.push(c.clamp(0, 100));
                }
                match read_trimmed(&supply.join("status")).as_deref() {
                    Some("Discharging") => discharging = true,
                    Some("Charging" | "Full") => charging_or_full = true,
                    _ => {}
                }
            }
            _ => {}
        }
    }
    reading.on_battery = if mains_online {
        Some(false)
    } else if discharging || (has_mains && has_battery) {
        Some(true)
    } else if charging_or_full {
        Some(false)
    } else {
        None
    };
    if !capacities.is_empty() {
        let mean = capacities.iter().sum::<i64>() / capacities.len() as i64;
        reading.battery_percent = u8::try_from(mean).ok();
    }
}

fn read_thermal(root: &Path, reading: &mut SysfsReading) {
    let mut worst = Thermal::Unknown;
    for zone in sorted_entries(&root.join("class/thermal")) {
        let is_zone = zone
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("thermal_zone"));
        if !is_zone {
            continue;
        }
        reading.found_anything = true;
        let Some(temp) = read_number(&zone.join("temp")) else {
            continue;
        };
        // Some zones report nonsense (absolute zero, or 0 when the sensor is off).
        if temp <= 0 {
            continue;
        }
        worst = worst.max(zone_level(&zone, temp));
    }
    reading.thermal = worst;
}

fn zone_level(zone: &Path, temp: i64) -> Thermal {
    let mut passive = None;
    let mut critical = None;
    for n in 0..32 {
        let Some(kind) = read_trimmed(&zone.join(format!("trip_point_{n}_type"))) else {
            break;
        };
        let Some(t) = read_number(&zone.join(format!("trip_point_{n}_temp"))) else {
            continue;
        };
        if t <= 0 {
            continue;
        }
        match kind.as_str() {
            "passive" | "hot" => passive = Some(passive.map_or(t, |p: i64| p.min(t))),
            "critical" => critical = Some(critical.map_or(t, |c: i64| c.min(t))),
            _ => {}
        }
    }
    let fixed = match temp {
        ..70_000 => Thermal::Nominal,
        70_000..80_000 => Thermal::Fair,
        80_000..90_000 => Thermal::Serious,
        _ => Thermal::Critical,
    };
    if critical.is_some_and(|c| temp >= c) {
        return Thermal::Critical;
    }
    if passive.is_some_and(|p| temp >= p) {
        return fixed.max(Thermal::Serious);
    }
    fixed
}
