//! A fault-injecting TCP proxy of Ferry's own, for tests and the torture harness.
//!
//! The kernel here has no `netem`, so cut connections, stalls, resets and slow links are made
//! in user space: the proxy sits between a client and a server on loopback and misbehaves on
//! purpose, per connection, as told. Counters say how many bytes crossed, so a test can assert
//! how much a client had to send again after a cut.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What to do to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward faithfully.
    None,
    /// After this many client→server bytes, close both sides abruptly (TCP reset).
    ResetAfter { bytes: u64 },
    /// After this many client→server bytes, close both sides politely (FIN).
    CloseAfter { bytes: u64 },
    /// After this many client→server bytes, stop forwarding in both directions and hold the
    /// connection open until the proxy is told otherwise or dropped: a hung peer.
    StallAfter { bytes: u64 },
    /// Forward client→server at most this many bytes per second.
    Trickle { bytes_per_s: u64 },
    /// Forward faithfully, but flip the lowest bit of the client→server byte at this position
    /// (counted from the connection's first byte): a middlebox that damages what it carries.
    FlipAfter { bytes: u64 },
    /// Forward server→client at most this many bytes per second (downloads: `ferry restore`).
    TrickleDown { bytes_per_s: u64 },
    /// Forward faithfully, but flip the lowest bit of the server→client byte at this position
    /// (counted from the connection's first byte the server sends): damage on the way down.
    FlipDownAfter { bytes: u64 },
    /// Accept, then close at once without reading.
    AcceptThenClose,
    /// Accept, then reset at once.
    AcceptThenReset,
    /// Read the request head, answer it with this HTTP status (and `Retry-After` seconds when
    /// non-zero) without contacting the server, then close: an overloaded or throttling server
    /// (503, 429) or a failing one (500).
    Respond { status: u16, retry_after_s: u32 },
}

/// A fault for the next `connections` connections (or all, if `None`), then [`Fault::None`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub fault: Fault,
    pub connections: Option<u32>,
}

impl Plan {
    pub fn always(fault: Fault) -> Plan {
        Plan {
            fault,
            connections: None,
        }
    }
    pub fn once(fault: Fault) -> Plan {
        Plan {
            fault,
            connections: Some(1),
        }
    }
}

/// Bytes and connections seen so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    pub connections: u64,
    pub bytes_to_server: u64,
    pub bytes_to_client: u64,
    pub faults_applied: u64,
}

#[derive(Debug, Default)]
struct Shared {
    plan: Mutex<Option<Plan>>,
    connections: AtomicU64,
    bytes_to_server: AtomicU64,
    bytes_to_client: AtomicU64,
    faults_applied: AtomicU64,
}

impl Shared {
    fn next_fault(&self) -> Fault {
        let Ok(mut plan) = self.plan.lock() else {
            return Fault::None;
        };
        let Some(p) = plan.as_mut() else {
            return Fault::None;
        };
        let fault = p.fault;
        if let Some(n) = p.connections.as_mut() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                *plan = None;
            }
        }
        fault
    }
}

/// A running proxy; dropping it stops it and closes every connection it carries.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// Bumped to cut every live connection (`cut_all`) or to release stalls.
    epoch: watch::Sender<u64>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on an ephemeral loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let (epoch, epoch_rx) = watch::channel(0u64);
        let accept = tokio::spawn(accept_loop(listener, upstream, shared.clone(), epoch_rx));
        Ok(FaultProxy {
            addr,
            shared,
            epoch,
            accept,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets what happens to connections accepted from now on.
    pub fn set(&self, plan: Plan) {
        if let Ok(mut p) = self.shared.plan.lock() {
            *p = Some(plan);
        }
    }

    /// Resets every connection open now (new ones follow the plan).
    pub fn cut_all(&self) {
        self.epoch.send_modify(|e| *e += 1);
    }

    pub fn stats(&self) -> Stats {
        Stats {
            connections: self.shared.connections.load(Ordering::SeqCst),
            bytes_to_server: self.shared.bytes_to_server.load(Ordering::SeqCst),
            bytes_to_client: self.shared.bytes_to_client.load(Ordering::SeqCst),
            faults_applied: self.shared.faults_applied.load(Ordering::SeqCst),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut_all();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    epoch: watch::Receiver<u64>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        shared.connections.fetch_add(1, Ordering::SeqCst);
        let fault = shared.next_fault();
        if fault != Fault::None {
            shared.faults_applied.fetch_add(1, Ordering::SeqCst);
        }
        tokio::spawn(carry(
            client,
            upstream,
            fault,
            shared.clone(),
            epoch.clone(),
        ));
    }
}

fn reset(stream: TcpStream) {
    // SO_LINGER 0 turns the close into a reset.
    #[allow(deprecated)]
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Answers one request with `status` and closes, draining what the client still sends for a
/// while so the close is not a reset that would hide the answer from it.
async fn respond(mut client: TcpStream, status: u16, retry_after_s: u32) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        match client.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let retry = if retry_after_s > 0 {
        format!("Retry-After: {retry_after_s}\r\n")
    } else {
        String::new()
    };
    let answer = format!(
        "HTTP/1.1 {status} Injected\r\n{retry}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    if client.write_all(answer.as_bytes()).await.is_err() {
        return;
    }
    let _ = client.shutdown().await;
    let drain = async {
        while let Ok(n) = client.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
}

async fn carry(
    client: TcpStream,
    upstream: SocketAddr,
    fault: Fault,
    shared: Arc<Shared>,
    mut epoch: watch::Receiver<u64>,
) {
    match fault {
        Fault::AcceptThenClose => return,
        Fault::AcceptThenReset => return reset(client),
        Fault::Respond {
            status,
            retry_after_s,
        } => return respond(client, status, retry_after_s).await,
        _ => {}
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return reset(client);
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    if let Fault::ResetAfter { .. } = fault {
        // SO_LINGER 0: when this connection is dropped, both peers see a reset.
        #[allow(deprecated)]
        {
            let _ = client.set_linger(Some(Duration::ZERO));
            let _ = server.set_linger(Some(Duration::ZERO));
        }
    }
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    epoch.mark_unchanged();
    let limit = match fault {
        Fault::ResetAfter { bytes } | Fault::CloseAfter { bytes } | Fault::StallAfter { bytes } => {
            Some(bytes)
        }
        _ => None,
    };

    // client → server, where the faults apply (uploads flow this way). Resolves to `true` when
    // the fault trips, `false` when the client is done sending.
    let up_shared = shared.clone();
    let up = async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut sent = 0u64;
        loop {
            let want = match (limit, fault) {
                (Some(l), _) => l.saturating_sub(sent).min(buf.len() as u64) as usize,
                (None, Fault::Trickle { bytes_per_s }) => {
                    (bytes_per_s / 10).clamp(1, buf.len() as u64) as usize
                }
                _ => buf.len(),
            };
            if want == 0 {
                return true;
            }
            let n = match cr.read(&mut buf[..want]).await {
                Ok(0) | Err(_) => {
                    let _ = sw.shutdown().await;
                    return false;
                }
                Ok(n) => n,
            };
            if let Fault::FlipAfter { bytes } = fault
                && (sent..sent + n as u64).contains(&bytes)
            {
                buf[(bytes - sent) as usize] ^= 1;
            }
            if sw.write_all(&buf[..n]).await.is_err() {
                return false;
            }
            sent += n as u64;
            up_shared
                .bytes_to_server
                .fetch_add(n as u64, Ordering::SeqCst);
            if let Fault::Trickle { .. } = fault {
                // A tenth of the rate every tenth of a second.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    // server → client, faithfully unless the fault is one of the downward ones.
    let down = async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut sent = 0u64;
        loop {
            let want = match fault {
                Fault::TrickleDown { bytes_per_s } => {
                    (bytes_per_s / 10).clamp(1, buf.len() as u64) as usize
                }
                _ => buf.len(),
            };
            let n = match sr.read(&mut buf[..want]).await {
                Ok(0) | Err(_) => {
                    let _ = cw.shutdown().await;
                    return;
                }
                Ok(n) => n,
            };
            if let Fault::FlipDownAfter { bytes } = fault
                && (sent..sent + n as u64).contains(&bytes)
            {
                buf[(bytes - sent) as usize] ^= 1;
            }
            if cw.write_all(&buf[..n]).await.is_err() {
                return;
            }
            sent += n as u64;
            shared.bytes_to_client.fetch_add(n as u64, Ordering::SeqCst);
            if let Fault::TrickleDown { .. } = fault {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    tokio::pin!(up);
    tokio::pin!(down);
    tokio::select! {
        // Told to cut everything: dropping the halves closes both sides.
        _ = epoch.changed() => {}
        tripped = &mut up => {
            if tripped {
                if let Fault::StallAfter { .. } = fault {
                    // Hold everything open, forwarding nothing, until released or dropped.
                    let _ = epoch.changed().await;
                }
                // Reset / close: return and drop (linger 0 makes it a reset).
                return;
            }
            // The client is done sending: carry the server's answer to the end.
            tokio::select! {
                _ = epoch.changed() => {}
                _ = &mut down => {}
            }
        }
        _ = &mut down => {}
    }
}
