//! The network protocol, version 1: pairing (SPAKE2 over the code), a Noise session keyed by
//! it, and the messages of a move inside. All integers are big-endian.
//!
//! **Pairing, in the clear**, each frame `u16 length | bytes`:
//! 1. sender → receiver: `"FERRYMIG" | u8 version (1) | SPAKE2 message` (Ed25519 group,
//!    symmetric, identity `ferry-migrate-v1`, password = the normalized code);
//! 2. receiver → sender: `"FERRYMIG" | u8 version | u8 status | SPAKE2 message` — status 0 ok,
//!    2 this code was already used, 3 version not supported;
//! 3. sender → receiver: Noise `Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s` message 1 (psk = the
//!    SPAKE2 key; prologue = `ferry-migrate-v1` and both SPAKE2 messages, length-prefixed);
//! 4. receiver → sender: `u8 status | Noise message 2` — status 0 ok, 1 wrong code (message 1
//!    did not authenticate under the receiver's key; no Noise message follows).
//!
//! Both sides thus prove the code before anything else moves; a wrong code fails at 3 on the
//! receiver and 4 on the sender. Fresh ephemeral keys on both sides (SPAKE2 and Noise) make a
//! recorded session useless to replay. A SPAKE2 message that does not decode gives a random key,
//! so it fails the same way as a wrong code.
//!
//! **Transport**: frames `u16 length | Noise ciphertext` (≤ 65535 bytes). A plaintext is a
//! record `u8 flags (bit 0: last record of the message) | piece`; records join into a message
//! `u8 version (1) | u8 kind | body`, at most 256 MiB for the manifest and 1 MiB otherwise:
//!
//! | kind | name      | direction | body |
//! |------|-----------|-----------|------|
//! | 1    | Manifest  | S → R     | the canonical manifest encoding |
//! | 2    | Have      | R → S     | `u32 entry count | bitmap` (bit i: entry i is verified already) |
//! | 3    | Begin     | S → R     | `u32 entry index | u8 encoding (0 raw, 1 zstd)` |
//! | 4    | Data      | S → R     | a piece of the entry as carried |
//! | 5    | End       | S → R     | — (the receiver verifies, makes durable, acknowledges) |
//! | 6    | Ack       | R → S     | `u32 entry index`: verified and durable |
//! | 7    | Done      | S → R     | — every missing content was sent |
//! | 8    | Verified  | R → S     | — the whole package is verified in staging |
//! | 9    | Installed | R → S     | — the caller installed it: the old device may stop |
//! | 10   | Abort     | both      | `u8 why | u64 need | u64 have | UTF-8 reason` |
//!
//! `why`: 1 cancelled (declined), 2 tampered, 3 protocol, 4 no space (`need`, `have` set),
//! 5 a failure of that side's own (the reason says which).

use crate::code::Code;
use crate::error::{MigrateError, Result, net};
use snow::{Builder, HandshakeState, StatelessTransportState};
use spake2::{Ed25519Group, Identity, Password, Spake2};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

pub(crate) const PROTOCOL: &[u8] = b"ferry-migrate-v1";
const NOISE: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
const MAGIC: &[u8; 8] = b"FERRYMIG";
const VERSION: u8 = 1;
const OK: u8 = 0;
const WRONG_CODE: u8 = 1;
const CODE_USED: u8 = 2;
const BAD_VERSION: u8 = 3;
const TAG: usize = 16;
const MAX_NOISE: usize = 65535;
/// Largest piece of a message in one record.
const RECORD: usize = MAX_NOISE - TAG - 1;
const MAX_MESSAGE: usize = 1 << 20;
const MAX_MANIFEST_MESSAGE: usize = crate::manifest::MAX_MANIFEST_BYTES as usize + 2;

/// How long a handshake step may take, and how long a peer may stay silent mid-transfer.
pub(crate) const HANDSHAKE: Duration = Duration::from_secs(30);
pub(crate) const IDLE: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Msg {
    Manifest(Vec<u8>),
    Have { count: u32, bits: Vec<u8> },
    Begin { index: u32, compressed: bool },
    Data(Vec<u8>),
    End,
    Ack { index: u32 },
    Done,
    Verified,
    Installed,
    Abort(Abort),
}

/// Why a side stopped, carried to the other so both report the same class of error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Abort {
    why: u8,
    need: u64,
    have: u64,
    reason: String,
}

impl Abort {
    /// What to tell the peer about a local failure; `None` when the peer caused it already
    /// knows (it left, or it aborted).
    pub(crate) fn from_error(e: &MigrateError) -> Option<Abort> {
        let (why, need, have) = match e {
            MigrateError::PeerGone | MigrateError::PeerAborted { .. } => return None,
            MigrateError::Cancelled => (1, 0, 0),
            MigrateError::Tampered { .. } => (2, 0, 0),
            MigrateError::Protocol(_) => (3, 0, 0),
            MigrateError::NoSpace { need, have } => (4, *need, *have),
            _ => (5, 0, 0),
        };
        Some(Abort {
            why,
            need,
            have,
            reason: e.to_string(),
        })
    }

    pub(crate) fn cancelled(reason: &str) -> Abort {
        Abort {
            why: 1,
            need: 0,
            have: 0,
            reason: reason.to_owned(),
        }
    }

    pub(crate) fn into_error(self) -> MigrateError {
        match self.why {
            2 => MigrateError::tampered(format!("the other side says: {}", self.reason)),
            3 => MigrateError::Protocol(format!("the other side says: {}", self.reason)),
            4 => MigrateError::NoSpace {
                need: self.need,
                have: self.have,
            },
            1 => MigrateError::Cancelled,
            _ => MigrateError::PeerAborted {
                reason: self.reason,
            },
        }
    }
}

impl Msg {
    fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        match self {
            Msg::Manifest(m) => {
                out.push(1);
                out.extend_from_slice(m);
            }
            Msg::Have { count, bits } => {
                out.push(2);
                out.extend_from_slice(&count.to_be_bytes());
                out.extend_from_slice(bits);
            }
            Msg::Begin { index, compressed } => {
                out.push(3);
                out.extend_from_slice(&index.to_be_bytes());
                out.push(u8::from(*compressed));
            }
            Msg::Data(d) => {
                out.reserve(d.len());
                out.push(4);
                out.extend_from_slice(d);
            }
            Msg::End => out.push(5),
            Msg::Ack { index } => {
                out.push(6);
                out.extend_from_slice(&index.to_be_bytes());
            }
            Msg::Done => out.push(7),
            Msg::Verified => out.push(8),
            Msg::Installed => out.push(9),
            Msg::Abort(a) => {
                out.push(10);
                out.push(a.why);
                out.extend_from_slice(&a.need.to_be_bytes());
                out.extend_from_slice(&a.have.to_be_bytes());
                out.extend_from_slice(a.reason.as_bytes());
            }
        }
        out
    }

    fn decode(mut bytes: Vec<u8>) -> Result<Msg> {
        let bad = |what: &str| MigrateError::Protocol(format!("bad message: {what}"));
        if bytes.len() < 2 {
            return Err(bad("too short"));
        }
        if bytes[0] != VERSION {
            return Err(bad("unsupported message version"));
        }
        let kind = bytes[1];
        let body = &bytes[2..];
        let u32_at = |b: &[u8], at: usize| -> Result<u32> {
            b.get(at..at + 4)
                .and_then(|s| s.try_into().ok())
                .map(u32::from_be_bytes)
                .ok_or_else(|| bad("short field"))
        };
        let empty = |m: Msg| {
            if body.is_empty() {
                Ok(m)
            } else {
                Err(bad("unexpected body"))
            }
        };
        match kind {
            1 => {
                bytes.drain(..2);
                Ok(Msg::Manifest(bytes))
            }
            2 => Ok(Msg::Have {
                count: u32_at(body, 0)?,
                bits: body[4..].to_vec(),
            }),
            3 if body.len() == 5 => Ok(Msg::Begin {
                index: u32_at(body, 0)?,
                compressed: match body[4] {
                    0 => false,
                    1 => true,
                    _ => return Err(bad("unknown encoding")),
                },
            }),
            4 => {
                bytes.drain(..2);
                Ok(Msg::Data(bytes))
            }
            5 => empty(Msg::End),
            6 if body.len() == 4 => Ok(Msg::Ack {
                index: u32_at(body, 0)?,
            }),
            7 => empty(Msg::Done),
            8 => empty(Msg::Verified),
            9 => empty(Msg::Installed),
            10 if body.len() >= 17 => Ok(Msg::Abort(Abort {
                why: body[0],
                need: u64::from_be_bytes(body[1..9].try_into().map_err(|_| bad("short"))?),
                have: u64::from_be_bytes(body[9..17].try_into().map_err(|_| bad("short"))?),
                reason: String::from_utf8_lossy(&body[17..])
                    .chars()
                    .take(1000)
                    .collect(),
            })),
            _ => Err(bad("unknown kind or wrong length")),
        }
    }
}

/// The sending half of an established session.
pub(crate) struct SendHalf {
    w: OwnedWriteHalf,
    noise: Arc<StatelessTransportState>,
    nonce: u64,
    /// Bytes written to the socket in this direction, framing included.
    pub(crate) wire: u64,
    buf: Vec<u8>,
}

impl SendHalf {
    pub(crate) async fn send(&mut self, msg: &Msg) -> Result<()> {
        let body = msg.encode();
        let mut pieces = body.chunks(RECORD).peekable();
        let mut plain = Vec::with_capacity(RECORD.min(body.len()) + 1);
        loop {
            let piece = pieces.next().unwrap_or(&[]);
            let last = pieces.peek().is_none();
            plain.clear();
            plain.push(u8::from(last));
            plain.extend_from_slice(piece);
            self.buf.resize(2 + plain.len() + TAG, 0);
            let n = self
                .noise
                .write_message(self.nonce, &plain, &mut self.buf[2..])
                .map_err(|e| MigrateError::Protocol(format!("encrypt: {e}")))?;
            self.nonce += 1;
            self.buf[..2].copy_from_slice(&(n as u16).to_be_bytes());
            self.w.write_all(&self.buf[..2 + n]).await.map_err(net)?;
            self.wire += 2 + n as u64;
            if last {
                return Ok(());
            }
        }
    }

    pub(crate) async fn shutdown(&mut self) {
        let _ = self.w.shutdown().await;
    }
}

/// The receiving half of an established session.
pub(crate) struct RecvHalf {
    r: BufReader<OwnedReadHalf>,
    noise: Arc<StatelessTransportState>,
    nonce: u64,
    pub(crate) wire: u64,
    frame: Vec<u8>,
    plain: Vec<u8>,
}

impl RecvHalf {
    /// The next message; [`MigrateError::PeerGone`] when the peer stays silent for `idle`.
    pub(crate) async fn recv(&mut self, idle: Duration) -> Result<Msg> {
        match tokio::time::timeout(idle, self.recv_inner()).await {
            Ok(r) => r,
            Err(_) => Err(MigrateError::PeerGone),
        }
    }

    /// Reads and drops whatever still comes until the peer closes (or `limit` passes), so a
    /// last message we sent is not destroyed by the reset that closing on unread bytes sends.
    pub(crate) async fn drain(&mut self, limit: Duration) {
        let mut sink = vec![0u8; 64 << 10];
        let _ = tokio::time::timeout(limit, async {
            while let Ok(n) = self.r.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    }

    async fn recv_inner(&mut self) -> Result<Msg> {
        let mut msg = Vec::new();
        let mut limit = MAX_MESSAGE;
        loop {
            let len = self.r.read_u16().await.map_err(net)? as usize;
            if len <= TAG {
                return Err(MigrateError::tampered("a frame too short to authenticate"));
            }
            self.frame.resize(len, 0);
            self.r.read_exact(&mut self.frame).await.map_err(net)?;
            self.wire += 2 + len as u64;
            self.plain.resize(len, 0);
            let n = self
                .noise
                .read_message(self.nonce, &self.frame, &mut self.plain)
                .map_err(|_| MigrateError::tampered("a frame failed authentication"))?;
            self.nonce += 1;
            let flags = self.plain[0];
            if flags & !1 != 0 {
                return Err(MigrateError::Protocol("unknown record flags".into()));
            }
            msg.extend_from_slice(&self.plain[1..n]);
            if msg.len() >= 2 && msg[1] == 1 {
                limit = MAX_MANIFEST_MESSAGE;
            }
            if msg.len() > limit {
                return Err(MigrateError::Protocol("message too large".into()));
            }
            if flags & 1 == 1 {
                return Msg::decode(msg);
            }
        }
    }
}

async fn write_frame(s: &mut TcpStream, bytes: &[u8]) -> Result<()> {
    let mut out = Vec::with_capacity(2 + bytes.len());
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
    s.write_all(&out).await.map_err(net)
}

async fn read_frame(s: &mut TcpStream, max: usize) -> Result<Vec<u8>> {
    let len = s.read_u16().await.map_err(net)? as usize;
    if len > max {
        return Err(MigrateError::Protocol("handshake frame too large".into()));
    }
    let mut buf = vec![0; len];
    s.read_exact(&mut buf).await.map_err(net)?;
    Ok(buf)
}

/// What a connecting peer said first.
pub(crate) enum Hello {
    /// A pairing attempt, with its SPAKE2 message.
    Pair(Vec<u8>),
    /// A Ferry sender speaking another version.
    OtherVersion,
}

/// Reads the first frame of a connection; an error means a stray connection, not an attempt.
pub(crate) async fn read_hello(s: &mut TcpStream) -> Result<Hello> {
    let f = read_frame(s, 256).await?;
    if f.len() < MAGIC.len() + 1 || &f[..MAGIC.len()] != MAGIC {
        return Err(MigrateError::Protocol("not a Ferry migrate sender".into()));
    }
    if f[MAGIC.len()] != VERSION {
        return Ok(Hello::OtherVersion);
    }
    Ok(Hello::Pair(f[MAGIC.len() + 1..].to_vec()))
}

/// Answers a connection that cannot pair: `status` is "code used" or "other version".
async fn refuse_with(mut s: TcpStream, status: u8) {
    let mut reply = MAGIC.to_vec();
    reply.extend_from_slice(&[VERSION, status]);
    let _ = write_frame(&mut s, &reply).await;
    let _ = s.shutdown().await;
    // Read until the sender closes, so our reply is not lost to a reset.
    let mut sink = [0u8; 256];
    while let Ok(n) = s.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
}

pub(crate) async fn refuse_used(mut s: TcpStream) {
    if read_hello(&mut s).await.is_ok() {
        refuse_with(s, CODE_USED).await;
    }
}

pub(crate) async fn refuse_version(s: TcpStream) {
    refuse_with(s, BAD_VERSION).await;
}

fn start(code: &Code) -> (Spake2<Ed25519Group>, Vec<u8>) {
    Spake2::<Ed25519Group>::start_symmetric(
        &Password::new(code.password()),
        &Identity::new(PROTOCOL),
    )
}

/// The SPAKE2 key, or a random one when the peer's message does not decode (so the Noise
/// handshake fails as for a wrong code, on both sides).
fn finish(spake: Spake2<Ed25519Group>, peer: &[u8]) -> Result<[u8; 32]> {
    if let Ok(key) = spake.finish(peer)
        && let Ok(key) = <[u8; 32]>::try_from(key.as_slice())
    {
        return Ok(key);
    }
    let mut key = [0u8; 32];
    getrandom::fill(&mut key)
        .map_err(|e| MigrateError::Io(std::io::Error::other(e.to_string())))?;
    Ok(key)
}

fn prologue(initiator: &[u8], responder: &[u8]) -> Vec<u8> {
    let mut p = PROTOCOL.to_vec();
    for m in [initiator, responder] {
        p.extend_from_slice(&(m.len() as u16).to_be_bytes());
        p.extend_from_slice(m);
    }
    p
}

fn noise(key: &[u8; 32], prologue: &[u8], initiator: bool) -> Result<HandshakeState> {
    let params = NOISE
        .parse()
        .map_err(|e| MigrateError::Protocol(format!("noise params: {e}")))?;
    let b = Builder::new(params)
        .psk(0, key)
        .and_then(|b| b.prologue(prologue))
        .map_err(|e| MigrateError::Protocol(format!("noise: {e}")))?;
    let hs = if initiator {
        b.build_initiator()
    } else {
        b.build_responder()
    };
    hs.map_err(|e| MigrateError::Protocol(format!("noise: {e}")))
}

fn split(stream: TcpStream, hs: HandshakeState) -> Result<(SendHalf, RecvHalf)> {
    let noise = Arc::new(
        hs.into_stateless_transport_mode()
            .map_err(|e| MigrateError::Protocol(format!("noise: {e}")))?,
    );
    let (r, w) = stream.into_split();
    Ok((
        SendHalf {
            w,
            noise: noise.clone(),
            nonce: 0,
            wire: 0,
            buf: Vec::new(),
        },
        RecvHalf {
            r: BufReader::with_capacity(128 << 10, r),
            noise,
            nonce: 0,
            wire: 0,
            frame: Vec::new(),
            plain: Vec::new(),
        },
    ))
}

/// The sender's side of pairing.
pub(crate) async fn initiate(mut s: TcpStream, code: &Code) -> Result<(SendHalf, RecvHalf)> {
    let (spake, mine) = start(code);
    let mut hello = MAGIC.to_vec();
    hello.push(VERSION);
    hello.extend_from_slice(&mine);
    write_frame(&mut s, &hello).await?;
    let reply = read_frame(&mut s, 256).await?;
    if reply.len() < MAGIC.len() + 2 || &reply[..MAGIC.len()] != MAGIC {
        return Err(MigrateError::Protocol(
            "not a Ferry migrate receiver".into(),
        ));
    }
    match reply[MAGIC.len() + 1] {
        OK => {}
        CODE_USED => return Err(MigrateError::CodeUsed),
        BAD_VERSION => {
            return Err(MigrateError::Protocol(
                "the receiving device speaks another protocol version: update both".into(),
            ));
        }
        other => return Err(MigrateError::Protocol(format!("unknown status {other}"))),
    }
    let theirs = &reply[MAGIC.len() + 2..];
    let key = finish(spake, theirs)?;
    let mut hs = noise(&key, &prologue(&mine, theirs), true)?;
    let mut buf = vec![0u8; MAX_NOISE];
    let n = hs
        .write_message(&[], &mut buf)
        .map_err(|e| MigrateError::Protocol(format!("noise: {e}")))?;
    write_frame(&mut s, &buf[..n]).await?;
    let answer = read_frame(&mut s, MAX_NOISE).await?;
    match answer.first() {
        Some(&OK) => {}
        Some(&WRONG_CODE) => return Err(MigrateError::WrongCode),
        _ => return Err(MigrateError::Protocol("bad handshake answer".into())),
    }
    hs.read_message(&answer[1..], &mut buf)
        .map_err(|_| MigrateError::WrongCode)?;
    split(s, hs)
}

/// The receiver's side of pairing, after [`read_hello`] gave the sender's SPAKE2 message.
pub(crate) async fn respond(
    mut s: TcpStream,
    code: &Code,
    theirs: &[u8],
) -> Result<(SendHalf, RecvHalf)> {
    let (spake, mine) = start(code);
    let mut reply = MAGIC.to_vec();
    reply.extend_from_slice(&[VERSION, OK]);
    reply.extend_from_slice(&mine);
    write_frame(&mut s, &reply).await?;
    let key = finish(spake, theirs)?;
    let mut hs = noise(&key, &prologue(theirs, &mine), false)?;
    let first = read_frame(&mut s, MAX_NOISE).await?;
    let mut buf = vec![0u8; MAX_NOISE];
    if hs.read_message(&first, &mut buf).is_err() {
        let _ = write_frame(&mut s, &[WRONG_CODE]).await;
        let _ = s.shutdown().await;
        return Err(MigrateError::WrongCode);
    }
    let n = hs
        .write_message(&[], &mut buf[1..])
        .map_err(|e| MigrateError::Protocol(format!("noise: {e}")))?;
    buf[0] = OK;
    write_frame(&mut s, &buf[..n + 1]).await?;
    split(s, hs)
}
