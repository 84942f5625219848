//! What the device's conditions are, as [`ferry_core::Conditions`] kept up to date in a
//! `tokio::sync::watch` channel.
//!
//! # Sources (Linux)
//! | condition | source | how changes arrive |
//! |---|---|---|
//! | network up / offline | NetworkManager `State`, `Connectivity` (system bus) | `PropertiesChanged` |
//! | metered | `Metered` of the primary connection's first device | `PropertiesChanged` |
//! | Wi-Fi name | `Ssid` of the primary connection's access point | `PropertiesChanged` |
//! | on battery, charge | UPower `OnBattery`, display device `Percentage`; else sysfs | `PropertiesChanged`; sysfs: timer |
//! | low-power mode | power-profiles-daemon `ActiveProfile == "power-saver"` | `PropertiesChanged` |
//! | user idle | logind manager `IdleHint` | `PropertiesChanged` |
//! | thermal | sysfs `class/thermal/thermal_zone*` | timer |
//!
//! Low power comes from power-profiles-daemon (under `org.freedesktop.UPower.PowerProfiles`
//! or its old name `net.hadess.PowerProfiles`), the service GNOME and KDE switch when the user
//! picks "power saver" or the battery runs low; UPower itself has no low-power flag.
//!
//! # Invariants
//! - A source that is absent reads as unknown and never fails [`Observer::start`]: no system
//!   bus, no NetworkManager, no battery, no thermal zones are all normal.
//! - Signal-driven: D-Bus sources are re-read only when they signal a change of a property
//!   they depend on, or when their bus name changes owner; the channel updates within
//!   milliseconds. Only sysfs, which has no change notifications, is re-read on a slow timer
//!   ([`ObserverConfig::sysfs_poll`], 60 s by default), and not at all when the first reading
//!   found no power supply and no thermal zone. With nothing changing there are no other
//!   wake-ups.
//! - The channel only changes when the merged [`Conditions`] change.
//!
//! **Boundary**: this crate observes; it decides nothing. [`report`] hands the observation to
//! `ferry_core::policy::decide`.

pub mod sysfs;

mod dbus;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_core::conditions::{Conditions, LocalTime, Network, Now, Power, Weekday};
use ferry_core::policy::{Policy, decide, next_change_hint};
use futures_util::{FutureExt, StreamExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use dbus::{Reading, Service};
pub use sysfs::SysfsReading;

/// Which D-Bus bus to find NetworkManager, UPower and logind on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bus {
    /// The system bus (`DBUS_SYSTEM_BUS_ADDRESS` or its default socket).
    System,
    /// A bus at this D-Bus address (tests serve fake services on a private bus).
    Address(String),
    /// Read nothing from D-Bus.
    None,
}

/// Where the observer looks.
#[derive(Debug, Clone)]
pub struct ObserverConfig {
    pub bus: Bus,
    /// The sysfs mount (`/sys`); `None` reads nothing from sysfs.
    pub sysfs_root: Option<PathBuf>,
    /// How often sysfs is re-read.
    pub sysfs_poll: Duration,
    /// Bound on connecting to the bus and on each property read.
    pub dbus_timeout: Duration,
}

impl Default for ObserverConfig {
    fn default() -> Self {
        ObserverConfig {
            bus: Bus::System,
            sysfs_root: Some(PathBuf::from("/sys")),
            sysfs_poll: Duration::from_secs(60),
            dbus_timeout: Duration::from_secs(2),
        }
    }
}

/// The latest reading of every source; [`Parts::merge`] makes the conditions out of them.
#[derive(Debug, Clone, Default)]
struct Parts {
    network: Network,
    upower_on_battery: Option<bool>,
    upower_percent: Option<u8>,
    power_saver: Option<bool>,
    power_saver_legacy: Option<bool>,
    idle: Option<bool>,
    sysfs: SysfsReading,
}

impl Parts {
    fn apply(&mut self, reading: Reading) {
        match reading {
            Reading::Network(n) => self.network = n,
            Reading::Battery {
                on_battery,
                percent,
            } => {
                self.upower_on_battery = on_battery;
                self.upower_percent = percent;
            }
            Reading::PowerSaver(v) => self.power_saver = v,
            Reading::PowerSaverLegacy(v) => self.power_saver_legacy = v,
            Reading::Idle(v) => self.idle = v,
        }
    }

    /// UPower first, sysfs where UPower says nothing.
    fn merge(&self) -> Conditions {
        Conditions {
            network: self.network.clone(),
            power: Power {
                on_battery: self.upower_on_battery.or(self.sysfs.on_battery),
                battery_percent: self.upower_percent.or(self.sysfs.battery_percent),
                low_power: self.power_saver.or(self.power_saver_legacy),
            },
            user_idle: self.idle,
            thermal: self.sysfs.thermal,
        }
    }
}

#[derive(Debug)]
struct Shared {
    parts: Mutex<Parts>,
    tx: watch::Sender<Conditions>,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut Parts)) {
        let merged = {
            let mut parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut parts);
            parts.merge()
        };
        self.tx.send_if_modified(|current| {
            let changed = *current != merged;
            if changed {
                *current = merged;
            }
            changed
        });
    }
}

/// Watches the sources; dropping it stops the watching.
#[derive(Debug)]
pub struct Observer {
    rx: watch::Receiver<Conditions>,
    tasks: Vec<JoinHandle<()>>,
    /// Keeps the channel open while the observer lives, even when every task has ended.
    _shared: Arc<Shared>,
}

impl Drop for Observer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Observer {
    /// Subscribes to every source, reads each once, and keeps watching in background tasks
    /// on the current Tokio runtime. Returns once the first reading of every source is in the
    /// channel. Never fails: an absent source reads as unknown.
    pub async fn start(config: ObserverConfig) -> Observer {
        let (tx, rx) = watch::channel(Conditions::default());
        let shared = Arc::new(Shared {
            parts: Mutex::new(Parts::default()),
            tx,
        });
        let mut tasks = Vec::new();

        if let Some(conn) = connect(&config).await {
            for service in Service::ALL {
                // Subscribe before reading, so that no change between the two is lost.
                let changes = service.changes(&conn).await.ok();
                let reading = read_with_timeout(service, &conn, config.dbus_timeout).await;
                shared.update(|p| p.apply(reading));
                let Some(mut changes) = changes else { continue };
                let (conn, shared, timeout) = (conn.clone(), shared.clone(), config.dbus_timeout);
                tasks.push(tokio::spawn(async move {
                    while changes.next().await.is_some() {
                        // One re-read for a burst of signals already queued.
                        while let Some(Some(())) = changes.next().now_or_never() {}
                        let reading = read_with_timeout(service, &conn, timeout).await;
                        shared.update(|p| p.apply(reading));
                    }
                    // The connection is gone (the bus stopped): what it said no longer holds.
                    shared.update(|p| p.apply(service.unknown()));
                }));
            }
        }

        if let Some(root) = config.sysfs_root.clone() {
            let first = sysfs::read(&root);
            shared.update(|p| p.sysfs = first);
            if first.found_anything {
                let shared = shared.clone();
                let period = config.sysfs_poll.max(Duration::from_millis(10));
                tasks.push(tokio::spawn(async move {
                    let mut ticks = tokio::time::interval(period);
                    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    ticks.tick().await;
                    loop {
                        ticks.tick().await;
                        // A few small reads of a memory file system: done in place, as a
                        // blocking-pool thread started (and ended) every minute would cost
                        // more than the reads.
                        let reading = sysfs::read(&root);
                        shared.update(|p| p.sysfs = reading);
                    }
                }));
            }
        }

        Observer {
            rx,
            tasks,
            _shared: shared,
        }
    }

    /// A receiver that sees every change of the conditions.
    pub fn subscribe(&self) -> watch::Receiver<Conditions> {
        self.rx.clone()
    }

    /// The conditions now.
    pub fn current(&self) -> Conditions {
        self.rx.borrow().clone()
    }
}

async fn connect(config: &ObserverConfig) -> Option<zbus::Connection> {
    let builder = match &config.bus {
        Bus::None => return None,
        Bus::System => zbus::connection::Builder::system(),
        Bus::Address(a) => zbus::connection::Builder::address(a.as_str()),
    };
    let builder = builder.method_timeout(config.dbus_timeout);
    tokio::time::timeout(config.dbus_timeout, builder.build())
        .await
        .ok()?
        .ok()
}

async fn read_with_timeout(
    service: Service,
    conn: &zbus::Connection,
    timeout: Duration,
) -> Reading {
    // Each property read is bounded by the connection's method timeout; this bounds a
    // service that answers every call slowly.
    tokio::time::timeout(timeout * 4, service.read(conn))
        .await
        .unwrap_or_else(|_| service.unknown())
}

/// The conditions now, read once from every source.
pub async fn snapshot(config: ObserverConfig) -> Conditions {
    Observer::start(config).await.current()
}

/// The local wall-clock time and the Unix time now, for `decide` (the time zone from `TZ` or
/// the system's).
pub fn local_now() -> Now {
    let z = jiff::Zoned::now();
    let weekday = Weekday::from_index(u32::from(
        z.weekday().to_monday_zero_offset().unsigned_abs(),
    ));
    let minute_of_day =
        u16::try_from(i32::from(z.hour()) * 60 + i32::from(z.minute())).unwrap_or_default();
    Now {
        unix_ms: u64::try_from(z.timestamp().as_millisecond()).unwrap_or_default(),
        local: LocalTime {
            weekday,
            minute_of_day,
        },
    }
}

/// "What Ferry sees now and what the policy makes of it", as text for `ferry conditions`.
pub fn report(conditions: &Conditions, policy: &Policy, now: &Now) -> String {
    let mut out = format!("{conditions}\ntime:     {}\n", now.local);
    out += &format!("decision: {}\n", decide(policy, conditions, now));
    if let Some(at) = next_change_hint(policy, now) {
        let minutes = at.saturating_sub(now.unix_ms).div_ceil(60_000);
        out += &format!(
            "time windows change in {}h{:02}m\n",
            minutes / 60,
            minutes % 60
        );
    }
    out
}

/// Observes once with the default sources and reports with `policy`.
pub async fn report_now(policy: &Policy) -> String {
    let conditions = snapshot(ObserverConfig::default()).await;
    report(&conditions, policy, &local_now())
}
