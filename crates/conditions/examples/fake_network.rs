//! A fake NetworkManager for whole-process tests (`scripts/torture`): the network a daemon
//! sees, flipped on command, served on a D-Bus bus the test started.
//!
//!     fake_network BUS_ADDRESS
//!
//! Owns `org.freedesktop.NetworkManager` on the bus and says "online, wired, unmetered". Each
//! line on stdin changes that and emits `PropertiesChanged`, as the real service does:
//! `online`, `offline` (disconnected), `metered`, `unmetered`; each is answered `ok` (or
//! `error: …`) on stdout. Prints `ready` once it owns the name. Ends at the end of stdin.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use std::io::{BufRead, Write};

use futures_util::StreamExt;
use zbus::message::Type as MessageType;
use zbus::{Connection, MessageStream, ObjectPath, OwnedVariant, Variant};

const NM: &str = "org.freedesktop.NetworkManager";
const NM_PATH: &str = "/org/freedesktop/NetworkManager";
const ACTIVE: &str = "/org/freedesktop/NetworkManager/ActiveConnection/1";
const ACTIVE_IFACE: &str = "org.freedesktop.NetworkManager.Connection.Active";
const DEVICE: &str = "/org/freedesktop/NetworkManager/Devices/2";
const DEVICE_IFACE: &str = "org.freedesktop.NetworkManager.Device";
/// `NMState`: connected (global), disconnected.
const CONNECTED_GLOBAL: u32 = 70;
const DISCONNECTED: u32 = 20;
/// `NMMetered`: yes, no.
const METERED_YES: u32 = 1;
const METERED_NO: u32 = 2;

type Props = HashMap<(String, String), HashMap<String, OwnedVariant>>;

fn ov<'a>(v: impl Into<Variant<'a>>) -> Result<OwnedVariant, zbus::Error> {
    v.into().try_to_owned()
}

struct Fake {
    conn: Connection,
    props: Arc<Mutex<Props>>,
}

impl Fake {
    fn preset(&self, obj: &str, iface: &str, name: &str, value: OwnedVariant) {
        if let Ok(mut p) = self.props.lock() {
            p.entry((obj.to_owned(), iface.to_owned()))
                .or_default()
                .insert(name.to_owned(), value);
        }
    }

    async fn set(
        &self,
        obj: &str,
        iface: &str,
        name: &str,
        value: OwnedVariant,
    ) -> Result<(), zbus::Error> {
        let changed = HashMap::from([(name.to_owned(), value.try_clone()?)]);
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
    }
}

/// Answers `Properties.Get` / `GetAll` from the table; everything else is "not faked".
async fn serve(conn: Connection, props: Arc<Mutex<Props>>) {
    let mut incoming = MessageStream::from(conn.clone());
    while let Some(Ok(msg)) = incoming.next().await {
        if msg.message_type() != MessageType::MethodCall {
            continue;
        }
        let hdr = msg.header();
        let obj = hdr
            .path()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default();
        let is_props =
            hdr.interface().map(|i| i.as_str()) == Some("org.freedesktop.DBus.Properties");
        let member = hdr.member().map(|m| m.as_str().to_owned());
        let body = msg.body();
        let table = |iface: String| -> HashMap<String, OwnedVariant> {
            props
                .lock()
                .ok()
                .and_then(|p| {
                    p.get(&(obj.clone(), iface)).map(|m| {
                        m.iter()
                            .filter_map(|(k, v)| Some((k.clone(), v.try_clone().ok()?)))
                            .collect()
                    })
                })
                .unwrap_or_default()
        };
        let _ = match (is_props, member.as_deref()) {
            (true, Some("Get")) => match body.deserialize::<(String, String)>() {
                Ok((iface, name)) => match table(iface).remove(&name) {
                    Some(v) => conn.reply(&hdr, &v).await,
                    None => {
                        conn.reply_error(
                            &hdr,
                            "org.freedesktop.DBus.Error.UnknownProperty",
                            &"no such property",
                        )
                        .await
                    }
                },
                Err(_) => {
                    conn.reply_error(&hdr, "org.freedesktop.DBus.Error.InvalidArgs", &"bad")
                        .await
                }
            },
            (true, Some("GetAll")) => match body.deserialize::<String>() {
                Ok(iface) => conn.reply(&hdr, &table(iface)).await,
                Err(_) => {
                    conn.reply_error(&hdr, "org.freedesktop.DBus.Error.InvalidArgs", &"bad")
                        .await
                }
            },
            _ => {
                conn.reply_error(
                    &hdr,
                    "org.freedesktop.DBus.Error.UnknownMethod",
                    &"not faked",
                )
                .await
            }
        };
    }
}

async fn command(fake: &Fake, line: &str) -> Result<(), String> {
    let e = |e: zbus::Error| e.to_string();
    match line {
        "online" => {
            fake.set(NM_PATH, NM, "State", ov(CONNECTED_GLOBAL).map_err(e)?)
                .await
                .map_err(e)?;
            fake.set(NM_PATH, NM, "Connectivity", ov(4u32).map_err(e)?)
                .await
                .map_err(e)
        }
        "offline" => {
            fake.set(NM_PATH, NM, "State", ov(DISCONNECTED).map_err(e)?)
                .await
                .map_err(e)?;
            fake.set(NM_PATH, NM, "Connectivity", ov(1u32).map_err(e)?)
                .await
                .map_err(e)
        }
        "metered" | "unmetered" => {
            let m = if line == "metered" {
                METERED_YES
            } else {
                METERED_NO
            };
            fake.set(DEVICE, DEVICE_IFACE, "Metered", ov(m).map_err(e)?)
                .await
                .map_err(e)
        }
        other => Err(format!("unknown command {other:?}")),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::args()
        .nth(1)
        .ok_or("usage: fake_network BUS_ADDRESS")?;
    let conn = zbus::connection::Builder::address(address.as_str())
        .build()
        .await?;
    let props: Arc<Mutex<Props>> = Arc::default();
    let fake = Fake {
        conn: conn.clone(),
        props: props.clone(),
    };
    fake.preset(NM_PATH, NM, "State", ov(CONNECTED_GLOBAL)?);
    fake.preset(NM_PATH, NM, "Connectivity", ov(4u32)?);
    fake.preset(
        NM_PATH,
        NM,
        "PrimaryConnection",
        ov(ObjectPath::try_from(ACTIVE)?)?,
    );
    fake.preset(
        ACTIVE,
        ACTIVE_IFACE,
        "Devices",
        ov(vec![ObjectPath::try_from(DEVICE)?])?,
    );
    fake.preset(ACTIVE, ACTIVE_IFACE, "Type", ov("802-3-ethernet")?);
    fake.preset(DEVICE, DEVICE_IFACE, "Metered", ov(METERED_NO)?);
    tokio::spawn(serve(conn.clone(), props));
    conn.request_name(NM).await?;
    println!("ready");
    std::io::stdout().flush()?;
    // stdin is read on a thread of its own (a blocking read), one command at a time.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = rx.recv().await {
        match command(&fake, line.trim()).await {
            Ok(()) => println!("ok"),
            Err(e) => println!("error: {e}"),
        }
        std::io::stdout().flush()?;
    }
    Ok(())
}
