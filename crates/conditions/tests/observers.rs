//! The observers against fake NetworkManager, UPower, power-profiles-daemon and logind
//! services served on a private `dbus-daemon`, and against a fake sysfs tree: every property
//! flip must reach the watch channel, and change the policy's decision, within 1 s.
//!
//! `dbus-daemon` must be installed (`scripts/setup.d/dbus.sh` does it); without it these tests
//! fail, they do not skip.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_conditions::{Bus, Observer, ObserverConfig};
use ferry_core::conditions::{Conditions, LocalTime, Network, Now, Power, Thermal, Weekday};
use ferry_core::policy::{Decision, Policy, WaitReason, decide};
use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;
use zbus::message::Type as MessageType;
use zbus::{Connection, MessageStream, ObjectPath, OwnedVariant, Variant};

/// The bound within which a change must be observed. It only bounds a failure: the tests wait
/// on the channel and go on as soon as the change arrives. Generous on purpose: many private
/// buses start at once on two shared cores; the 1 s reaction goal is a measurement, not a test.
const WITHIN: Duration = Duration::from_secs(10);

/// A private bus: a `dbus-daemon` child with its own configuration, killed on drop.
struct PrivateBus {
    address: String,
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl PrivateBus {
    async fn start() -> PrivateBus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("bus.conf");
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:dir={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
                dir.path().display()
            ),
        )
        .unwrap();
        let mut child = tokio::process::Command::new("dbus-daemon")
            .arg("--nofork")
            .arg("--print-address=1")
            .arg(format!("--config-file={}", config.display()))
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect(
                "dbus-daemon is needed by these tests and could not be started: \
                 run scripts/setup.d/dbus.sh (apt-get install dbus)",
            );
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let address = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("dbus-daemon printed no address")
            .unwrap()
            .expect("dbus-daemon exited without printing its address");
        assert!(address.starts_with("unix:"), "odd address {address:?}");
        PrivateBus {
            address,
            child,
            _dir: dir,
        }
    }
}

type Props = HashMap<(String, String), HashMap<String, OwnedVariant>>;

/// Fake services on one connection: answers `org.freedesktop.DBus.Properties.Get`/`GetAll`
/// from a table, and emits `PropertiesChanged` when a test changes a value.
struct Fake {
    conn: Connection,
    props: Arc<Mutex<Props>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn ov<'a>(v: impl Into<Variant<'a>>) -> OwnedVariant {
    v.into().try_to_owned().unwrap()
}

fn path(p: &str) -> OwnedVariant {
    ov(ObjectPath::try_from(p).unwrap())
}

impl Fake {
    async fn start(bus: &PrivateBus) -> Fake {
        let conn = zbus::connection::Builder::address(bus.address.as_str())
            .build()
            .await
            .unwrap();
        let props: Arc<Mutex<Props>> = Arc::default();
        let mut incoming = MessageStream::from(conn.clone());
        let (c, p) = (conn.clone(), props.clone());
        let server = tokio::spawn(async move {
            while let Some(Ok(msg)) = incoming.next().await {
                if msg.message_type() != MessageType::MethodCall {
                    continue;
                }
                let hdr = msg.header();
                let member = hdr.member().map(|m| m.as_str().to_owned());
                let obj = hdr
                    .path()
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_default();
                let is_props =
                    hdr.interface().map(|i| i.as_str()) == Some("org.freedesktop.DBus.Properties");
                let body = msg.body();
                let answer: Result<(), zbus::Error> = match (is_props, member.as_deref()) {
                    (true, Some("Get")) => {
                        let (iface, name): (String, String) = body.deserialize().unwrap();
                        let value = p
                            .lock()
                            .unwrap()
                            .get(&(obj, iface))
                            .and_then(|m| m.get(&name))
                            .map(|v| v.try_clone().unwrap());
                        match value {
                            Some(v) => c.reply(&hdr, &v).await,
                            None => {
                                c.reply_error(
                                    &hdr,
                                    "org.freedesktop.DBus.Error.UnknownProperty",
                                    &"no such property",
                                )
                                .await
                            }
                        }
                    }
                    (true, Some("GetAll")) => {
                        let iface: String = body.deserialize().unwrap();
                        let all: HashMap<String, OwnedVariant> = p
                            .lock()
                            .unwrap()
                            .get(&(obj, iface))
                            .map(|m| {
                                m.iter()
                                    .map(|(k, v)| (k.clone(), v.try_clone().unwrap()))
                                    .collect()
                            })
                            .unwrap_or_default();
                        c.reply(&hdr, &all).await
                    }
                    _ => {
                        c.reply_error(
                            &hdr,
                            "org.freedesktop.DBus.Error.UnknownMethod",
                            &"not faked",
                        )
                        .await
                    }
                };
                answer.unwrap();
            }
        });
        Fake {
            conn,
            props,
            server,
        }
    }

    /// Sets a value without signalling (the state before the observer starts).
    fn preset(&self, obj: &str, iface: &str, name: &str, value: OwnedVariant) {
        self.props
            .lock()
            .unwrap()
            .entry((obj.to_owned(), iface.to_owned()))
            .or_default()
            .insert(name.to_owned(), value);
    }

    /// Sets a value and emits `PropertiesChanged` for it, as the real services do.
    async fn set(&self, obj: &str, iface: &str, name: &str, value: OwnedVariant) {
        let changed: HashMap<String, OwnedVariant> =
            HashMap::from([(name.to_owned(), value.try_clone().unwrap())]);
        self.preset(obj, iface, name, value);
        self.conn
            .emit_signal(
                None::<&str>,
                obj,
                "org.freedesktop.DBus.Properties",
                "PropertiesChanged",
                &(iface, changed, Vec::<String>::new()),
            )
            .await
            .unwrap();
    }

    async fn own(&self, name: &str) {
        self.conn.request_name(name).await.unwrap();
    }

    async fn disown(&self, name: &str) {
        assert!(self.conn.release_name(name).await.unwrap());
    }
}

const NM: &str = "org.freedesktop.NetworkManager";
const NM_PATH: &str = "/org/freedesktop/NetworkManager";
const ACTIVE: &str = "/org/freedesktop/NetworkManager/ActiveConnection/1";
const ACTIVE_IFACE: &str = "org.freedesktop.NetworkManager.Connection.Active";
const DEVICE: &str = "/org/freedesktop/NetworkManager/Devices/2";
const AP: &str = "/org/freedesktop/NetworkManager/AccessPoint/7";
const AP_IFACE: &str = "org.freedesktop.NetworkManager.AccessPoint";
const UPOWER: &str = "org.freedesktop.UPower";
const DISPLAY: &str = "/org/freedesktop/UPower/devices/DisplayDevice";
const UPOWER_DEVICE: &str = "org.freedesktop.UPower.Device";
const PPD: &str = "org.freedesktop.UPower.PowerProfiles";
const PPD_PATH: &str = "/org/freedesktop/UPower/PowerProfiles";
const LOGIND: &str = "org.freedesktop.login1";
const LOGIND_MANAGER: &str = "org.freedesktop.login1.Manager";

/// A laptop on its home Wi-Fi (unmetered), on mains power at 80%, balanced profile, user idle.
async fn preset_laptop(fake: &Fake) {
    fake.preset(NM_PATH, NM, "State", ov(70u32));
    fake.preset(NM_PATH, NM, "Connectivity", ov(4u32));
    fake.preset(NM_PATH, NM, "PrimaryConnection", path(ACTIVE));
    fake.preset(
        ACTIVE,
        ACTIVE_IFACE,
        "Devices",
        ov(vec![ObjectPath::try_from(DEVICE).unwrap()]),
    );
    fake.preset(ACTIVE, ACTIVE_IFACE, "Type", ov("802-11-wireless"));
    fake.preset(ACTIVE, ACTIVE_IFACE, "SpecificObject", path(AP));
    fake.preset(
        DEVICE,
        "org.freedesktop.NetworkManager.Device",
        "Metered",
        ov(4u32),
    );
    fake.preset(AP, AP_IFACE, "Ssid", ov(b"Home".to_vec()));
    fake.preset("/org/freedesktop/UPower", UPOWER, "OnBattery", ov(false));
    fake.preset(DISPLAY, UPOWER_DEVICE, "IsPresent", ov(true));
    fake.preset(DISPLAY, UPOWER_DEVICE, "Percentage", ov(80.0f64));
    fake.preset(PPD_PATH, PPD, "ActiveProfile", ov("balanced"));
    fake.preset(
        "/org/freedesktop/login1",
        LOGIND_MANAGER,
        "IdleHint",
        ov(true),
    );
    for name in [NM, UPOWER, PPD, LOGIND] {
        fake.own(name).await;
    }
}

fn laptop_conditions() -> Conditions {
    Conditions {
        network: Network::Online {
            metered: Some(false),
            wifi_ssid: Some("Home".into()),
        },
        power: Power {
            on_battery: Some(false),
            battery_percent: Some(80),
            low_power: Some(false),
        },
        user_idle: Some(true),
        thermal: Thermal::Unknown,
    }
}

fn config(bus: &PrivateBus, sysfs: Option<&Path>) -> ObserverConfig {
    ObserverConfig {
        bus: Bus::Address(bus.address.clone()),
        sysfs_root: sysfs.map(Path::to_path_buf),
        sysfs_poll: Duration::from_millis(50),
        dbus_timeout: Duration::from_secs(2),
    }
}

fn noon() -> Now {
    Now {
        unix_ms: 1_763_294_400_000,
        local: LocalTime::new(Weekday::Mon, 12, 0).unwrap(),
    }
}

/// Waits until the observed conditions equal `expected`; fails after [`WITHIN`].
async fn expect(rx: &mut watch::Receiver<Conditions>, expected: &Conditions, what: &str) {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        if *rx.borrow_and_update() == *expected {
            return;
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => panic!("{what}: the observer stopped"),
            Err(_) => panic!(
                "{what}: not observed within {WITHIN:?}\nexpected {expected:#?}\nobserved {:#?}",
                *rx.borrow()
            ),
        }
    }
}

fn decision(policy: &Policy, rx: &watch::Receiver<Conditions>) -> Decision {
    decide(policy, &rx.borrow(), &noon())
}

const ALLOW: Decision = Decision::Allow {
    bandwidth_cap_bytes_per_s: None,
    max_file_bytes: None,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_services_no_sysfs_means_unknown_and_allowed() {
    let bus = PrivateBus::start().await;
    let empty = tempfile::tempdir().unwrap();
    let observer = Observer::start(config(&bus, Some(empty.path()))).await;
    assert_eq!(observer.current(), Conditions::default());
    assert_eq!(
        decide(&Policy::default(), &observer.current(), &noon()),
        ALLOW
    );

    // No bus at all: the same.
    let nowhere = ObserverConfig {
        bus: Bus::Address(format!("unix:path={}/nothing-here", empty.path().display())),
        ..config(&bus, None)
    };
    assert_eq!(
        Observer::start(nowhere).await.current(),
        Conditions::default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_changes_are_observed_and_decided_within_a_second() {
    let bus = PrivateBus::start().await;
    let fake = Fake::start(&bus).await;
    preset_laptop(&fake).await;
    let observer = Observer::start(config(&bus, None)).await;
    let mut rx = observer.subscribe();
    let mut c = laptop_conditions();
    expect(&mut rx, &c, "initial state").await;
    let policy = Policy {
        wifi_deny: vec!["Cafe".into()],
        ..Policy::default()
    };
    assert_eq!(decision(&policy, &rx), ALLOW);

    // The device turns metered.
    fake.set(
        DEVICE,
        "org.freedesktop.NetworkManager.Device",
        "Metered",
        ov(1u32),
    )
    .await;
    c.network = Network::Online {
        metered: Some(true),
        wifi_ssid: Some("Home".into()),
    };
    expect(&mut rx, &c, "metered").await;
    assert_eq!(
        decision(&policy, &rx),
        Decision::Wait(WaitReason::WaitingForUnmeteredNetwork)
    );

    // Roaming to another access point of a denied network, unmetered again.
    fake.set(
        DEVICE,
        "org.freedesktop.NetworkManager.Device",
        "Metered",
        ov(2u32),
    )
    .await;
    fake.preset(
        "/org/freedesktop/NetworkManager/AccessPoint/8",
        AP_IFACE,
        "Ssid",
        ov(b"Cafe".to_vec()),
    );
    fake.set(
        ACTIVE,
        ACTIVE_IFACE,
        "SpecificObject",
        path("/org/freedesktop/NetworkManager/AccessPoint/8"),
    )
    .await;
    c.network = Network::Online {
        metered: Some(false),
        wifi_ssid: Some("Cafe".into()),
    };
    expect(&mut rx, &c, "roamed to Cafe").await;
    assert_eq!(
        decision(&policy, &rx),
        Decision::Wait(WaitReason::WifiNotAllowed)
    );

    // The SSID of the current access point changes (a hidden network becoming known).
    fake.set(
        "/org/freedesktop/NetworkManager/AccessPoint/8",
        AP_IFACE,
        "Ssid",
        ov(b"Office".to_vec()),
    )
    .await;
    c.network = Network::Online {
        metered: Some(false),
        wifi_ssid: Some("Office".into()),
    };
    expect(&mut rx, &c, "ssid changed").await;
    assert_eq!(decision(&policy, &rx), ALLOW);

    // Disconnected.
    fake.set(NM_PATH, NM, "State", ov(20u32)).await;
    c.network = Network::Offline;
    expect(&mut rx, &c, "disconnected").await;
    assert_eq!(
        decision(&policy, &rx),
        Decision::Wait(WaitReason::WaitingForNetwork)
    );

    // Connected to a wired network with no primary-connection details; then connectivity
    // none while the state still says connected.
    fake.set(NM_PATH, NM, "PrimaryConnection", path("/")).await;
    fake.set(NM_PATH, NM, "State", ov(70u32)).await;
    c.network = Network::Online {
        metered: None,
        wifi_ssid: None,
    };
    expect(&mut rx, &c, "reconnected").await;
    assert_eq!(decision(&policy, &rx), ALLOW);
    fake.set(NM_PATH, NM, "Connectivity", ov(1u32)).await;
    c.network = Network::Offline;
    expect(&mut rx, &c, "connectivity none").await;

    // NetworkManager goes away: unknown, which does not block.
    fake.disown(NM).await;
    c.network = Network::Unknown;
    expect(&mut rx, &c, "NetworkManager gone").await;
    assert_eq!(decision(&policy, &rx), ALLOW);

    // ... and comes back.
    fake.preset(NM_PATH, NM, "Connectivity", ov(4u32));
    fake.own(NM).await;
    c.network = Network::Online {
        metered: None,
        wifi_ssid: None,
    };
    expect(&mut rx, &c, "NetworkManager back").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_and_idle_changes_are_observed_and_decided_within_a_second() {
    let bus = PrivateBus::start().await;
    let fake = Fake::start(&bus).await;
    preset_laptop(&fake).await;
    let observer = Observer::start(config(&bus, None)).await;
    let mut rx = observer.subscribe();
    let mut c = laptop_conditions();
    expect(&mut rx, &c, "initial state").await;
    let policy = Policy::default();
    let idle_only = Policy {
        only_when_idle: true,
        ..Policy::default()
    };
    let charging_only = Policy {
        require_charging: true,
        ..Policy::default()
    };

    fake.set("/org/freedesktop/UPower", UPOWER, "OnBattery", ov(true))
        .await;
    c.power.on_battery = Some(true);
    expect(&mut rx, &c, "unplugged").await;
    assert_eq!(decision(&policy, &rx), ALLOW);
    assert_eq!(
        decision(&charging_only, &rx),
        Decision::Wait(WaitReason::OnBattery)
    );

    fake.set(DISPLAY, UPOWER_DEVICE, "Percentage", ov(21.4f64))
        .await;
    c.power.battery_percent = Some(21);
    expect(&mut rx, &c, "battery low").await;
    assert_eq!(
        decision(&policy, &rx),
        Decision::Wait(WaitReason::BatteryBelowThreshold)
    );

    fake.set(PPD_PATH, PPD, "ActiveProfile", ov("power-saver"))
        .await;
    c.power.low_power = Some(true);
    expect(&mut rx, &c, "power saver").await;

    fake.set("/org/freedesktop/UPower", UPOWER, "OnBattery", ov(false))
        .await;
    c.power.on_battery = Some(false);
    expect(&mut rx, &c, "plugged in").await;
    assert_eq!(
        decision(&policy, &rx),
        Decision::Wait(WaitReason::LowPowerMode)
    );

    fake.set(PPD_PATH, PPD, "ActiveProfile", ov("performance"))
        .await;
    c.power.low_power = Some(false);
    expect(&mut rx, &c, "performance").await;
    assert_eq!(decision(&policy, &rx), ALLOW);

    fake.set(
        "/org/freedesktop/login1",
        LOGIND_MANAGER,
        "IdleHint",
        ov(false),
    )
    .await;
    c.user_idle = Some(false);
    expect(&mut rx, &c, "user active").await;
    assert_eq!(
        decision(&idle_only, &rx),
        Decision::Wait(WaitReason::UserActive)
    );
    assert_eq!(decision(&policy, &rx), ALLOW);

    // A property nobody depends on changes: ignored (the next change still arrives).
    fake.set(DISPLAY, UPOWER_DEVICE, "TimeToEmpty", ov(3600i64))
        .await;
    // UPower stops: its part becomes unknown, the rest stays.
    fake.disown(UPOWER).await;
    c.power.on_battery = None;
    c.power.battery_percent = None;
    expect(&mut rx, &c, "UPower gone").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_stopping_degrades_to_unknown() {
    let mut bus = PrivateBus::start().await;
    let fake = Fake::start(&bus).await;
    preset_laptop(&fake).await;
    let observer = Observer::start(config(&bus, None)).await;
    let mut rx = observer.subscribe();
    expect(&mut rx, &laptop_conditions(), "initial state").await;
    bus.child.kill().await.unwrap();
    expect(&mut rx, &Conditions::default(), "bus stopped").await;
    assert_eq!(decision(&Policy::default(), &rx), ALLOW);
}

fn write(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    // Write then rename, so the poller never reads a half-written file.
    let tmp = p.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(tmp, p).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sysfs_power_and_thermal_are_observed_and_decided_within_a_second() {
    let bus = PrivateBus::start().await;
    let sys = tempfile::tempdir().unwrap();
    let root = sys.path();
    write(root, "class/power_supply/AC/type", "Mains\n");
    write(root, "class/power_supply/AC/online", "1\n");
    write(root, "class/power_supply/BAT0/type", "Battery\n");
    write(root, "class/power_supply/BAT0/capacity", "64\n");
    write(root, "class/power_supply/BAT0/status", "Charging\n");
    // A mouse's battery is not the system's.
    write(root, "class/power_supply/hidpp_battery_0/type", "Battery\n");
    write(root, "class/power_supply/hidpp_battery_0/scope", "Device\n");
    write(root, "class/power_supply/hidpp_battery_0/capacity", "5\n");
    write(
        root,
        "class/power_supply/hidpp_battery_0/status",
        "Discharging\n",
    );
    write(root, "class/thermal/thermal_zone0/temp", "45000\n");
    write(root, "class/thermal/thermal_zone1/temp", "51000\n");
    write(
        root,
        "class/thermal/thermal_zone1/trip_point_0_type",
        "passive\n",
    );
    write(
        root,
        "class/thermal/thermal_zone1/trip_point_0_temp",
        "60000\n",
    );
    write(root, "class/thermal/cooling_device0/type", "Processor\n");

    // UPower is absent, so power comes from sysfs.
    let observer = Observer::start(config(&bus, Some(root))).await;
    let mut rx = observer.subscribe();
    let policy = Policy::default();
    let mut c = Conditions {
        power: Power {
            on_battery: Some(false),
            battery_percent: Some(64),
            low_power: None,
        },
        thermal: Thermal::Nominal,
        ..Conditions::default()
    };
    expect(&mut rx, &c, "initial state").await;
    assert_eq!(decision(&policy, &rx), ALLOW);

    write(root, "class/power_supply/AC/online", "0\n");
    write(root, "class/power_supply/BAT0/status", "Discharging\n");
    write(root, "class/power_supply/BAT0/capacity", "12\n");
    c.power.on_battery = Some(true);
    c.power.battery_percent = Some(12);
    expect(&mut rx, &c, "unplugged, low").await;
    assert_eq!(
        decision(&policy, &rx),
        Decision::Wait(WaitReason::BatteryBelowThreshold)
    );

    write(root, "class/power_supply/AC/online", "1\n");
    write(root, "class/power_supply/BAT0/status", "Charging\n");
    c.power.on_battery = Some(false);
    expect(&mut rx, &c, "plugged in").await;
    assert_eq!(decision(&policy, &rx), ALLOW);

    // Zone 1 passes its passive trip point at 61 °C: serious, although 61 °C is nominal by
    // the fixed thresholds.
    write(root, "class/thermal/thermal_zone1/temp", "61000\n");
    c.thermal = Thermal::Serious;
    expect(&mut rx, &c, "passive trip point").await;
    assert_eq!(
        decision(&policy, &rx),
        Decision::Wait(WaitReason::ThermalPressure)
    );

    write(root, "class/thermal/thermal_zone1/temp", "50000\n");
    write(root, "class/thermal/thermal_zone0/temp", "75000\n");
    c.thermal = Thermal::Fair;
    expect(&mut rx, &c, "fair").await;
    assert_eq!(decision(&policy, &rx), ALLOW);

    write(root, "class/thermal/thermal_zone0/temp", "93500\n");
    c.thermal = Thermal::Critical;
    expect(&mut rx, &c, "critical").await;
    assert_eq!(
        decision(&policy, &rx),
        Decision::Wait(WaitReason::ThermalPressure)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upower_wins_over_sysfs_and_sysfs_fills_in() {
    let bus = PrivateBus::start().await;
    let fake = Fake::start(&bus).await;
    fake.preset("/org/freedesktop/UPower", UPOWER, "OnBattery", ov(true));
    fake.preset(DISPLAY, UPOWER_DEVICE, "IsPresent", ov(false));
    fake.preset(DISPLAY, UPOWER_DEVICE, "Percentage", ov(0.0f64));
    fake.own(UPOWER).await;
    let sys = tempfile::tempdir().unwrap();
    write(sys.path(), "class/power_supply/AC/type", "Mains\n");
    write(sys.path(), "class/power_supply/AC/online", "1\n");
    write(sys.path(), "class/power_supply/BAT0/type", "Battery\n");
    write(sys.path(), "class/power_supply/BAT0/capacity", "42\n");
    let observer = Observer::start(config(&bus, Some(sys.path()))).await;
    let mut rx = observer.subscribe();
    let c = Conditions {
        power: Power {
            on_battery: Some(true),
            battery_percent: Some(42),
            low_power: None,
        },
        ..Conditions::default()
    };
    expect(&mut rx, &c, "merged").await;
}

#[test]
fn sysfs_reader_handles_missing_and_odd_files() {
    use ferry_conditions::sysfs::{SysfsReading, read};
    let sys = tempfile::tempdir().unwrap();
    assert_eq!(read(sys.path()), SysfsReading::default());
    assert_eq!(read(&sys.path().join("absent")), SysfsReading::default());
    let root = sys.path();
    // A desktop: mains only, a sensor that reads nonsense and one that cannot be read.
    write(root, "class/power_supply/ACAD/type", "Mains\n");
    write(root, "class/power_supply/ACAD/online", "1\n");
    write(root, "class/thermal/thermal_zone0/temp", "-273000\n");
    write(root, "class/thermal/thermal_zone1/temp", "garbage\n");
    let r = read(root);
    assert_eq!(r.on_battery, Some(false));
    assert_eq!(r.battery_percent, None);
    assert_eq!(r.thermal, Thermal::Unknown);
    assert!(r.found_anything);
    // A battery alone that reports no status: unknown power source, known charge.
    let sys2 = tempfile::tempdir().unwrap();
    write(sys2.path(), "class/power_supply/BAT1/type", "Battery\n");
    write(sys2.path(), "class/power_supply/BAT1/capacity", "150\n");
    let r = read(sys2.path());
    assert_eq!((r.on_battery, r.battery_percent), (None, Some(100)));
}

#[test]
fn report_says_what_is_seen_and_decided() {
    let c = laptop_conditions();
    let text = ferry_conditions::report(&c, &Policy::default(), &noon());
    assert!(text.contains("online, unmetered, Wi-Fi \"Home\""), "{text}");
    assert!(text.contains("decision: uploads may run"), "{text}");
    let mut hot = c.clone();
    hot.thermal = Thermal::Critical;
    let windows: Policy = Policy {
        time_windows: vec![
            ferry_core::policy::TimeWindow::new(
                "01:00".parse().unwrap(),
                "05:00".parse().unwrap(),
                vec![],
            )
            .unwrap(),
        ],
        ..Policy::default()
    };
    let text = ferry_conditions::report(&hot, &windows, &noon());
    assert!(text.contains("(thermal_pressure)"), "{text}");
    assert!(text.contains("time windows change in 13h00m"), "{text}");
}
