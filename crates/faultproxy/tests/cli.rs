//! The `ferry-faultproxy` binary as scripts drive it: started as a process, told faults on
//! stdin, observed from a real TCP server and client.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};

#[test]
fn faults_are_set_and_counted_over_stdin() {
    // A server that answers every connection "ok" after reading its request to the end.
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = server.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in server.incoming() {
            let Ok(mut s) = s else { continue };
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
            let _ = s.write_all(b"ok");
        }
    });
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry-faultproxy"))
        .arg(upstream.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    let mut ask = |cmd: &str| {
        writeln!(stdin, "{cmd}").unwrap();
        let mut answer = String::new();
        out.read_line(&mut answer).unwrap();
        answer.trim().to_string()
    };
    let exchange = |body: &[u8]| {
        let mut c = TcpStream::connect(&addr).unwrap();
        let _ = c.write_all(body);
        let _ = c.shutdown(std::net::Shutdown::Write);
        let mut answer = Vec::new();
        let _ = c.read_to_end(&mut answer);
        answer
    };
    assert_eq!(ask("accept-close 1"), "ok");
    assert!(
        exchange(b"hello").is_empty(),
        "the first connection is refused"
    );
    assert_eq!(exchange(b"hello"), b"ok", "the second one is carried");
    assert_eq!(ask("respond 429 1 1"), "ok");
    let answer = exchange(b"GET / HTTP/1.1\r\n\r\n");
    assert!(answer.starts_with(b"HTTP/1.1 429 "));
    assert!(ask("bogus").starts_with("error: "));
    assert!(ask("reset-after x").starts_with("error: "));
    let stats = ask("stats");
    assert!(stats.contains("\"connections\":3"), "{stats}");
    assert!(stats.contains("\"faults_applied\":2"), "{stats}");
    drop(stdin);
    assert!(
        child.wait().unwrap().success(),
        "end of stdin stops the proxy"
    );
}
