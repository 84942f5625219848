//! Small hand-written D-Bus clients of NetworkManager, UPower, power-profiles-daemon and logind.
//!
//! Each [`Service`] is read whole with `org.freedesktop.DBus.Properties.Get` calls and read
//! again when it signals: a `PropertiesChanged` from its bus name that names one of the
//! properties it depends on, or a `NameOwnerChanged` for its name (the service started, stopped
//! or restarted). Match rules are added before the first read, so no change between the two is
//! lost. A service that is absent, or answers with an error or an unexpected type, reads as
//! unknown; nothing is polled.

use std::collections::HashMap;

use ferry_core::conditions::Network;
use futures_util::stream::{self, Stream, StreamExt};
use zbus::message::Type as MessageType;
use zbus::{Connection, MatchRule, Message, MessageStream, OwnedObjectPath, OwnedVariant};

const PROPERTIES: &str = "org.freedesktop.DBus.Properties";

pub(crate) const NM: &str = "org.freedesktop.NetworkManager";
const NM_PATH: &str = "/org/freedesktop/NetworkManager";
const NM_ACTIVE: &str = "org.freedesktop.NetworkManager.Connection.Active";
const NM_DEVICE: &str = "org.freedesktop.NetworkManager.Device";
const NM_AP: &str = "org.freedesktop.NetworkManager.AccessPoint";

pub(crate) const UPOWER: &str = "org.freedesktop.UPower";
const UPOWER_PATH: &str = "/org/freedesktop/UPower";
const UPOWER_DISPLAY: &str = "/org/freedesktop/UPower/devices/DisplayDevice";
const UPOWER_DEVICE: &str = "org.freedesktop.UPower.Device";

pub(crate) const PPD: &str = "org.freedesktop.UPower.PowerProfiles";
const PPD_PATH: &str = "/org/freedesktop/UPower/PowerProfiles";
pub(crate) const PPD_LEGACY: &str = "net.hadess.PowerProfiles";
const PPD_LEGACY_PATH: &str = "/net/hadess/PowerProfiles";

pub(crate) const LOGIND: &str = "org.freedesktop.login1";
const LOGIND_PATH: &str = "/org/freedesktop/login1";
const LOGIND_MANAGER: &str = "org.freedesktop.login1.Manager";

/// A D-Bus service the observer watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Service {
    NetworkManager,
    UPower,
    /// power-profiles-daemon under its current name.
    PowerProfiles,
    /// power-profiles-daemon under its old name (before 0.20).
    PowerProfilesLegacy,
    Logind,
}

/// One service's contribution to the conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reading {
    Network(Network),
    Battery {
        on_battery: Option<bool>,
        percent: Option<u8>,
    },
    PowerSaver(Option<bool>),
    PowerSaverLegacy(Option<bool>),
    Idle(Option<bool>),
}

impl Service {
    pub(crate) const ALL: [Service; 5] = [
        Service::NetworkManager,
        Service::UPower,
        Service::PowerProfiles,
        Service::PowerProfilesLegacy,
        Service::Logind,
    ];

    pub(crate) fn bus_name(self) -> &'static str {
        match self {
            Service::NetworkManager => NM,
            Service::UPower => UPOWER,
            Service::PowerProfiles => PPD,
            Service::PowerProfilesLegacy => PPD_LEGACY,
            Service::Logind => LOGIND,
        }
    }

    /// The properties whose change means a new reading.
    fn watched(self) -> &'static [&'static str] {
        match self {
            Service::NetworkManager => &[
                "State",
                "Connectivity",
                "PrimaryConnection",
                "Devices",
                "Type",
                "SpecificObject",
                "Metered",
                "Ssid",
            ],
            Service::UPower => &["OnBattery", "Percentage", "IsPresent"],
            Service::PowerProfiles | Service::PowerProfilesLegacy => &["ActiveProfile"],
            Service::Logind => &["IdleHint"],
        }
    }

    /// The reading when the service is absent.
    pub(crate) fn unknown(self) -> Reading {
        match self {
            Service::NetworkManager => Reading::Network(Network::Unknown),
            Service::UPower => Reading::Battery {
                on_battery: None,
                percent: None,
            },
            Service::PowerProfiles => Reading::PowerSaver(None),
            Service::PowerProfilesLegacy => Reading::PowerSaverLegacy(None),
            Service::Logind => Reading::Idle(None),
        }
    }

    /// Reads the service's state now.
    pub(crate) async fn read(self, conn: &Connection) -> Reading {
        match self {
            Service::NetworkManager => Reading::Network(read_network(conn).await),
            Service::UPower => {
                let on_battery = get::<bool>(conn, UPOWER, UPOWER_PATH, UPOWER, "OnBattery").await;
                let present =
                    get::<bool>(conn, UPOWER, UPOWER_DISPLAY, UPOWER_DEVICE, "IsPresent").await;
                let percent = match present {
                    Some(false) => None,
                    _ => get::<f64>(conn, UPOWER, UPOWER_DISPLAY, UPOWER_DEVICE, "Percentage")
                        .await
                        .filter(|p| p.is_finite())
                        .map(|p| p.round().clamp(0.0, 100.0) as u8),
                };
                Reading::Battery {
                    on_battery,
                    percent,
                }
            }
            Service::PowerProfiles => {
                Reading::PowerSaver(read_power_saver(conn, PPD, PPD_PATH).await)
            }
            Service::PowerProfilesLegacy => {
                Reading::PowerSaverLegacy(read_power_saver(conn, PPD_LEGACY, PPD_LEGACY_PATH).await)
            }
            Service::Logind => Reading::Idle(
                get::<bool>(conn, LOGIND, LOGIND_PATH, LOGIND_MANAGER, "IdleHint").await,
            ),
        }
    }

    /// Subscribes to the signals that mean this service's reading may have changed. Yields one
    /// item per relevant signal.
    pub(crate) async fn changes(
        self,
        conn: &Connection,
    ) -> zbus::Result<impl Stream<Item = ()> + Send + Unpin + 'static> {
        let props = MatchRule::builder()
            .msg_type(MessageType::Signal)
            .sender(self.bus_name())
            .interface(PROPERTIES)
            .member("PropertiesChanged")
            .build()?;
        let owner = MatchRule::builder()
            .msg_type(MessageType::Signal)
            .sender("org.freedesktop.DBus")
            .interface("org.freedesktop.DBus")
            .member("NameOwnerChanged")
            .arg(0, self.bus_name())
            .build()?;
        let props = MessageStream::for_match_rule(props, conn, None).await?;
        let owner = MessageStream::for_match_rule(owner, conn, None).await?;
        let watched = self.watched();
        let props = props.filter_map(move |m| async move {
            m.ok().filter(|m| names_watched(m, watched)).map(|_| ())
        });
        let owner = owner.filter_map(|m| async move { m.ok().map(|_| ()) });
        Ok(Box::pin(stream::select(props, owner)))
    }
}

/// Whether a `PropertiesChanged` signal names one of `watched` (changed or invalidated).
fn names_watched(m: &Message, watched: &[&str]) -> bool {
    let body = m.body();
    let Ok((_iface, changed, invalidated)) =
        body.deserialize::<(String, HashMap<String, OwnedVariant>, Vec<String>)>()
    else {
        return false;
    };
    changed
        .keys()
        .chain(invalidated.iter())
        .any(|k| watched.contains(&k.as_str()))
}

/// One property, or `None` when the call fails or the value has another type.
async fn get<T>(conn: &Connection, dest: &str, path: &str, iface: &str, name: &str) -> Option<T>
where
    T: TryFrom<OwnedVariant>,
{
    let reply = conn
        .call_method(Some(dest), path, Some(PROPERTIES), "Get", &(iface, name))
        .await
        .ok()?;
    let value: OwnedVariant = reply.body().deserialize().ok()?;
    T::try_from(value).ok()
}

async fn read_power_saver(conn: &Connection, dest: &str, path: &str) -> Option<bool> {
    get::<String>(conn, dest, path, dest, "ActiveProfile")
        .await
        .map(|p| p == "power-saver")
}

// NM_STATE and NM_CONNECTIVITY values (NetworkManager's D-Bus API reference).
const NM_STATE_UNKNOWN: u32 = 0;
const NM_STATE_CONNECTED_LOCAL: u32 = 50;
const NM_CONNECTIVITY_NONE: u32 = 1;

/// NetworkManager's view, mapped to [`Network`]:
/// - `State` unknown (0), or no answer: `Unknown`;
/// - `State` below `CONNECTED_LOCAL` (asleep, disconnected, disconnecting, connecting), or
///   `Connectivity` = none: `Offline`;
/// - otherwise `Online`, also with local-only or site-only connectivity, since a destination
///   may be on the local network (a transfer that cannot connect is retried by the engine).
///   `metered` is the `Metered` of the primary connection's first device (yes / guess-yes:
///   metered, no / guess-no: unmetered, unknown: `None`); `wifi_ssid` is the `Ssid` of the
///   primary connection's access point (its `SpecificObject`) when it is a Wi-Fi connection.
async fn read_network(conn: &Connection) -> Network {
    let Some(state) = get::<u32>(conn, NM, NM_PATH, NM, "State").await else {
        return Network::Unknown;
    };
    if state == NM_STATE_UNKNOWN {
        return Network::Unknown;
    }
    if state < NM_STATE_CONNECTED_LOCAL {
        return Network::Offline;
    }
    if get::<u32>(conn, NM, NM_PATH, NM, "Connectivity").await == Some(NM_CONNECTIVITY_NONE) {
        return Network::Offline;
    }
    let primary = get::<OwnedObjectPath>(conn, NM, NM_PATH, NM, "PrimaryConnection")
        .await
        .filter(|p| p.as_str() != "/");
    let Some(primary) = primary else {
        return Network::Online {
            metered: None,
            wifi_ssid: None,
        };
    };
    let primary = primary.as_str();
    let device = get::<Vec<OwnedObjectPath>>(conn, NM, primary, NM_ACTIVE, "Devices")
        .await
        .and_then(|d| d.into_iter().next());
    let metered = match device {
        Some(d) => match get::<u32>(conn, NM, d.as_str(), NM_DEVICE, "Metered").await {
            Some(1 | 3) => Some(true),
            Some(2 | 4) => Some(false),
            _ => None,
        },
        None => None,
    };
    let mut wifi_ssid = None;
    if get::<String>(conn, NM, primary, NM_ACTIVE, "Type")
        .await
        .as_deref()
        == Some("802-11-wireless")
        && let Some(ap) = get::<OwnedObjectPath>(conn, NM, primary, NM_ACTIVE, "SpecificObject")
            .await
            .filter(|p| p.as_str() != "/")
    {
        wifi_ssid = get::<Vec<u8>>(conn, NM, ap.as_str(), NM_AP, "Ssid")
            .await
            .map(|b| String::from_utf8_lossy(&b).into_owned());
    }
    Network::Online { metered, wifi_ssid }
}
