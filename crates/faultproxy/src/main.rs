//! `ferry-faultproxy`: the fault-injecting proxy as a process, so scripts (the benchmark suite,
//! the torture harness) can put it between real programs and change its faults while they run.
//!
//! Usage: `ferry-faultproxy UPSTREAM_ADDR`. The first stdout line is `listening on ADDR`. Then
//! one command per stdin line, each answered with one stdout line (`ok`, a stats JSON, or
//! `error: …`); end of stdin stops the proxy.
//!
//! Commands: `none`; `reset-after BYTES [N]`; `close-after BYTES [N]`; `stall-after BYTES [N]`;
//! `trickle BYTES_PER_S [N]`; `flip-after BYTES [N]`; `trickle-down BYTES_PER_S [N]` and
//! `flip-down-after BYTES [N]` (the same, server→client); `accept-close [N]`; `accept-reset [N]`;
//! `respond STATUS RETRY_AFTER_S [N]`; `cut` (reset every open connection; also releases
//! stalls); `stats`. `N` limits the fault to the next N connections (default: all).

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::process::ExitCode;

use ferry_faultproxy::{Fault, FaultProxy, Plan};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(upstream), None) = (args.next(), args.next()) else {
        eprintln!("usage: ferry-faultproxy UPSTREAM_ADDR   (commands on stdin, see --help)");
        return ExitCode::from(2);
    };
    let upstream: SocketAddr = match upstream.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ferry-faultproxy: {upstream}: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferry-faultproxy: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let proxy = match runtime.block_on(FaultProxy::start(upstream)) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("ferry-faultproxy: listen: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout().lock();
    if writeln!(out, "listening on {}", proxy.addr())
        .and_then(|()| out.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    // Commands are read on this (blocking) thread; the proxy runs on the runtime's workers.
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let answer = match command(&proxy, line.trim()) {
            Ok(a) => a,
            Err(e) => format!("error: {e}"),
        };
        if writeln!(out, "{answer}")
            .and_then(|()| out.flush())
            .is_err()
        {
            break;
        }
    }
    drop(proxy);
    runtime.shutdown_background();
    ExitCode::SUCCESS
}

fn command(proxy: &FaultProxy, line: &str) -> Result<String, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let num = |i: usize| -> Result<u64, String> {
        words
            .get(i)
            .ok_or_else(|| format!("{line}: argument {i} missing"))?
            .parse()
            .map_err(|_| format!("{line}: argument {i} is not a number"))
    };
    // The optional connection count follows the fault's own arguments.
    let count = |i: usize| -> Result<Option<u32>, String> {
        match words.get(i) {
            None => Ok(None),
            Some(w) => w
                .parse()
                .map(Some)
                .map_err(|_| format!("{line}: connection count is not a number")),
        }
    };
    let (fault, connections) = match words.first().copied() {
        None => return Ok("ok".into()),
        Some("stats") => {
            let s = proxy.stats();
            return Ok(format!(
                "{{\"connections\":{},\"bytes_to_server\":{},\"bytes_to_client\":{},\"faults_applied\":{}}}",
                s.connections, s.bytes_to_server, s.bytes_to_client, s.faults_applied
            ));
        }
        Some("cut") => {
            proxy.cut_all();
            return Ok("ok".into());
        }
        Some("none") => (Fault::None, None),
        Some("reset-after") => (Fault::ResetAfter { bytes: num(1)? }, count(2)?),
        Some("close-after") => (Fault::CloseAfter { bytes: num(1)? }, count(2)?),
        Some("stall-after") => (Fault::StallAfter { bytes: num(1)? }, count(2)?),
        Some("trickle") => (
            Fault::Trickle {
                bytes_per_s: num(1)?,
            },
            count(2)?,
        ),
        Some("flip-after") => (Fault::FlipAfter { bytes: num(1)? }, count(2)?),
        Some("trickle-down") => (
            Fault::TrickleDown {
                bytes_per_s: num(1)?,
            },
            count(2)?,
        ),
        Some("flip-down-after") => (Fault::FlipDownAfter { bytes: num(1)? }, count(2)?),
        Some("accept-close") => (Fault::AcceptThenClose, count(1)?),
        Some("accept-reset") => (Fault::AcceptThenReset, count(1)?),
        Some("respond") => {
            let status = u16::try_from(num(1)?).map_err(|_| format!("{line}: bad status"))?;
            let retry_after_s =
                u32::try_from(num(2)?).map_err(|_| format!("{line}: bad Retry-After"))?;
            (
                Fault::Respond {
                    status,
                    retry_after_s,
                },
                count(3)?,
            )
        }
        Some(other) => return Err(format!("unknown command {other}")),
    };
    proxy.set(Plan { fault, connections });
    Ok("ok".into())
}
