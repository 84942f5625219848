//! Transcript tests of the job model: each script is commands in, decisions out, written as
//! the text a reviewer reads. The driver replays the command lines through `ferry-core` and
//! the whole rendered transcript must equal the script, so any changed decision shows up as a
//! readable diff.
//!
//! Syntax: a command line, then its output lines starting with `> `. Job names (`a`, `b`, ...)
//! stand for fixed UUIDs; URLs are relative to `https://up.example`.

use ferry_core::job::referenced_ids;
use ferry_core::*;
use std::collections::{BTreeMap, HashMap};
use uuid::Uuid;

struct Driver {
    jobs: HashMap<Uuid, Job>,
    names: BTreeMap<Uuid, String>,
    policy: ExtensionPolicy,
    now_ms: i64,
}

const EXT: &str = "ext.photos";

impl Driver {
    fn new() -> Driver {
        Driver {
            jobs: HashMap::new(),
            names: BTreeMap::new(),
            policy: ExtensionPolicy {
                bases: vec![UrlBase::parse("https://up.example/u/").unwrap()],
                ..ExtensionPolicy::default()
            },
            now_ms: 1_000,
        }
    }

    fn id(&mut self, name: &str) -> Uuid {
        // Stable per name, so transcripts do not depend on the order names first appear.
        let n = name.bytes().fold(0u128, |acc, b| acc * 257 + u128::from(b));
        let id = Uuid::from_u128(n);
        self.names.insert(id, name.to_owned());
        id
    }

    fn name(&self, id: Uuid) -> &str {
        self.names.get(&id).map(String::as_str).unwrap_or("?")
    }

    fn url(rel: &str) -> String {
        if rel.contains("://") {
            rel.to_owned()
        } else {
            format!("https://up.example{rel}")
        }
    }

    fn count(&self, ext: &str) -> u32 {
        self.jobs
            .values()
            .filter(|j| j.extension == ext && j.counts_against_limit())
            .count() as u32
    }

    fn describe(&self, j: &Job) -> String {
        let mut s = format!("{} {}", self.name(j.id), j.state);
        if j.acknowledged {
            s.push_str(" acked");
        }
        if j.retries > 0 {
            s.push_str(&format!(" retries={}", j.retries));
        }
        if let Some(st) = j.status {
            s.push_str(&format!(" status={st}"));
        }
        if let Some(e) = &j.error {
            s.push_str(&format!(" error={e}"));
        }
        for (n, v) in &j.response_headers {
            s.push_str(&format!(" {n}={v}"));
        }
        s
    }

    fn item(&mut self, words: &[&str]) -> TxItem {
        match words {
            ["create", name, url, rest @ ..] => {
                let mut destination = Destination::new(Method::Put, Self::url(url));
                let mut metadata = BTreeMap::new();
                for w in rest {
                    if let Some(m) = w.strip_prefix("method=") {
                        destination.method = Method::parse(m).unwrap_or(Method::Post);
                    } else if let Some(h) = w.strip_prefix("h:") {
                        let (k, v) = h.split_once('=').unwrap();
                        destination = destination.header(k, v);
                    } else if let Some(m) = w.strip_prefix("meta:") {
                        let (k, v) = m.split_once('=').unwrap();
                        metadata.insert(k.to_owned(), v.to_owned());
                    }
                }
                TxItem::Create(NewJob {
                    id: self.id(name),
                    resource_id: format!("res-{name}"),
                    content_hash: ContentHash([name.len() as u8; 32]),
                    destination,
                    metadata,
                })
            }
            ["retry", name] => TxItem::Retry {
                job: self.id(name),
                destination: None,
            },
            ["retry", name, url] => TxItem::Retry {
                job: self.id(name),
                destination: Some(Destination::new(Method::Post, Self::url(url))),
            },
            ["ack", name] => TxItem::Acknowledge { job: self.id(name) },
            ["cancel", name] => TxItem::Cancel { job: self.id(name) },
            other => panic!("bad item {other:?}"),
        }
    }

    /// Runs one command line and returns its output lines.
    fn run(&mut self, line: &str) -> Vec<String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["tx", ..] | ["tx@", ..] => {
                let (ext, body) = match words[0] {
                    "tx@" => (words[1], line.splitn(3, ' ').nth(2).unwrap_or("")),
                    _ => (EXT, line.split_once(' ').map(|x| x.1).unwrap_or("")),
                };
                let items: Vec<TxItem> = body
                    .split(';')
                    .map(|i| i.split_whitespace().collect::<Vec<_>>())
                    .filter(|w| !w.is_empty())
                    .map(|w| self.item(&w))
                    .collect();
                let view_jobs: HashMap<Uuid, Job> = referenced_ids(&items)
                    .into_iter()
                    .filter_map(|id| self.jobs.get(&id).map(|j| (id, j.clone())))
                    .collect();
                let view = TxView {
                    extension: ext,
                    jobs: &view_jobs,
                    unacknowledged: self.count(ext),
                };
                match plan_transaction(&view, &items, &self.policy, self.now_ms) {
                    Ok(writes) => {
                        let mut out = Vec::new();
                        for w in writes {
                            let mut s = self.describe(&w.job);
                            if let Some(r) = &w.receipt {
                                s.push_str(&format!(" (receipt: {})", r.state));
                            }
                            out.push(s);
                            self.jobs.insert(w.job.id, w.job);
                        }
                        vec![format!("ok: {}; count {}", out.join(", "), self.count(ext))]
                    }
                    Err(e) => vec![format!(
                        "rejected {}: item {} ({}): {}",
                        e.code(),
                        e.index,
                        self.name(e.job),
                        e.reason
                    )],
                }
            }
            ["start", name] => {
                let id = self.id(name);
                self.event(TransferEvent::Start { job: id })
            }
            ["finish", name, "ok", status, headers @ ..] => {
                let id = self.id(name);
                let outcome = Outcome::Succeeded {
                    status: status.parse().unwrap(),
                    headers: headers
                        .iter()
                        .map(|h| {
                            let (k, v) = h.split_once('=').unwrap();
                            (k.to_owned(), v.to_owned())
                        })
                        .collect(),
                };
                self.event(TransferEvent::Finish { job: id, outcome })
            }
            ["finish", name, "fail", status, code] => {
                let id = self.id(name);
                let outcome = Outcome::Failed {
                    status: status.parse().ok(),
                    headers: Vec::new(),
                    error: ErrorCode::from_name(code),
                };
                self.event(TransferEvent::Finish { job: id, outcome })
            }
            ["fetch", action] => {
                let action = match *action {
                    "process" => Action::Process,
                    "retry" => Action::Retry,
                    _ => Action::Acknowledge,
                };
                let mut hits: Vec<&Job> = self
                    .jobs
                    .values()
                    .filter(|j| j.extension == EXT && j.in_action(action, self.policy.max_retries))
                    .collect();
                hits.sort_by_key(|j| self.name(j.id).to_owned());
                let names: Vec<&str> = hits.iter().map(|j| self.name(j.id)).collect();
                vec![format!("[{}]", names.join(" "))]
            }
            ["limit", n] => {
                self.policy.job_limit = n.parse().unwrap();
                vec![]
            }
            ["bases", list @ ..] => {
                self.policy.bases = list.iter().map(|b| UrlBase::parse(b).unwrap()).collect();
                vec![]
            }
            ["max_retries", n] => {
                self.policy.max_retries = n.parse().unwrap();
                vec![]
            }
            ["clock", n] => {
                self.now_ms += n.trim_start_matches('+').parse::<i64>().unwrap();
                vec![]
            }
            ["disable"] => {
                let mine: Vec<Job> = self
                    .jobs
                    .values()
                    .filter(|j| j.extension == EXT)
                    .cloned()
                    .collect();
                let mut writes = plan_cancel_all(&mine, self.now_ms);
                writes.sort_by_key(|w| self.name(w.job.id).to_owned());
                let out: Vec<String> = writes.iter().map(|w| self.describe(&w.job)).collect();
                for w in writes {
                    self.jobs.insert(w.job.id, w.job);
                }
                vec![format!(
                    "cancelled: {}; count {}",
                    out.join(", "),
                    self.count(EXT)
                )]
            }
            other => panic!("bad command {other:?}"),
        }
    }

    fn event(&mut self, event: TransferEvent) -> Vec<String> {
        let id = event.job_id();
        match apply_event(self.jobs.get(&id), &event, self.now_ms) {
            Ok(job) => {
                let s = self.describe(&job);
                self.jobs.insert(id, job);
                vec![s]
            }
            Err(e) => vec![format!(
                "refused: {}",
                e.to_string().replace(&id.to_string(), self.name(id))
            )],
        }
    }
}

fn check(script: &str) {
    let mut d = Driver::new();
    let mut actual = String::new();
    for line in script.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.starts_with('>') || line.starts_with('#') {
            if line.starts_with('#') {
                actual.push_str(line);
                actual.push('\n');
            }
            continue;
        }
        actual.push_str(line);
        actual.push('\n');
        for out in d.run(line) {
            actual.push_str("> ");
            actual.push_str(&out);
            actual.push('\n');
        }
    }
    let expected: String = script
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(actual, expected, "\n--- actual transcript ---\n{actual}");
}

#[test]
fn life_of_a_job() {
    check(
        "
        tx create a /u/a.jpg h:X-Album=Summer meta:file_name=a.jpg
        > ok: a registered; count 1
        fetch process
        > [a]
        start a
        > a pending
        fetch process
        > [a]
        finish a ok 201 ETag=\"x1\" Location=/u/a.jpg
        > a succeeded status=201 etag=\"x1\" location=/u/a.jpg
        fetch process
        > []
        fetch acknowledge
        > [a]
        tx ack a
        > ok: a succeeded acked status=201 etag=\"x1\" location=/u/a.jpg (receipt: succeeded); count 0
        fetch acknowledge
        > []
        tx ack a
        > rejected wrong_state: item 0 (a): cannot acknowledge a job that is succeeded and acknowledged
        ",
    );
}

#[test]
fn failure_retry_once_then_only_acknowledge() {
    check(
        "
        tx create a /u/a.jpg
        > ok: a registered; count 1
        start a
        > a pending
        finish a fail 503 server_error
        > a failed status=503 error=server_error
        fetch retry
        > [a]
        fetch acknowledge
        > [a]
        tx retry a /u/elsewhere/a.jpg
        > ok: a registered retries=1; count 1
        fetch retry
        > []
        start a
        > a pending retries=1
        finish a fail - network_lost
        > a failed retries=1 error=network_lost
        fetch retry
        > []
        tx retry a
        > rejected retries_exhausted: item 0 (a): the job was already retried 1 times (at most 1)
        max_retries 2
        fetch retry
        > [a]
        # Narrowed consent applies to a retry's old destination too.
        bases https://up.example/u/other/
        tx retry a
        > rejected bad_destination: item 0 (a): bad destination: URL \"https://up.example/u/elsewhere/a.jpg\" lies outside every destination base the extension declared
        bases https://up.example/u/
        tx ack a
        > ok: a failed acked retries=1 error=network_lost (receipt: failed); count 0
        tx retry a
        > rejected wrong_state: item 0 (a): cannot retry a job that is failed and acknowledged
        ",
    );
}

#[test]
fn limit_is_judged_on_the_whole_transaction() {
    check(
        "
        limit 2
        tx create a /u/a ; create b /u/b
        > ok: a registered, b registered; count 2
        tx create c /u/c
        > rejected limit_exceeded: item 0 (c): the transaction would hold 3 jobs, over the limit of 2
        fetch process
        > [a b]
        # A cancel later in the same transaction frees the slot for an earlier create.
        tx create c /u/c ; cancel a
        > ok: c registered, a cancelled acked (receipt: cancelled); count 2
        tx create d /u/d ; create e /u/e ; cancel b
        > rejected limit_exceeded: item 1 (e): the transaction would hold 3 jobs, over the limit of 2
        fetch process
        > [b c]
        # A lowered limit still lets the extension free slots, but not take them.
        limit 1
        tx cancel b
        > ok: b cancelled acked (receipt: cancelled); count 1
        tx create d /u/d
        > rejected limit_exceeded: item 0 (d): the transaction would hold 2 jobs, over the limit of 1
        # A retry takes its slot again: over a lowered limit it is refused until others go.
        start c
        > c pending
        finish c fail 500 server_error
        > c failed status=500 error=server_error
        limit 2
        tx create d /u/d
        > ok: d registered; count 2
        limit 1
        tx retry c
        > rejected limit_exceeded: item 0 (c): the transaction would hold 2 jobs, over the limit of 1
        tx retry c ; cancel d
        > ok: c registered retries=1, d cancelled acked (receipt: cancelled); count 1
        ",
    );
}

#[test]
fn one_bad_item_rejects_everything() {
    check(
        "
        tx create a /u/a ; create a /u/a2
        > rejected duplicate_item: item 1 (a): the job appears again in this transaction (first at item 0)
        tx create a /u/a ; create b https://evil.example/u/b
        > rejected bad_destination: item 1 (b): bad destination: URL \"https://evil.example/u/b\" lies outside every destination base the extension declared
        tx create a /u/a ; create b http://up.example/u/b
        > rejected bad_destination: item 1 (b): bad destination: URL \"http://up.example/u/b\" uses http on a host that is not loopback; use https
        tx create a /u/a ; create b /u/b h:Content-Length=5
        > rejected bad_destination: item 1 (b): bad destination: header \"content-length\" is set by Ferry's transfer, not by the extension
        tx create a /u/a ; create b /u/b meta:Bad=1
        > rejected bad_metadata: item 1 (b): bad metadata: at most 32 entries and 4096 bytes, keys of [a-z0-9_.-]
        tx create a /u/a ; ack zz
        > rejected unknown_job: item 1 (zz): no such job
        fetch process
        > []
        tx create a /u/a
        > ok: a registered; count 1
        tx create a /u/again
        > rejected job_exists: item 0 (a): a job with this id already exists
        tx create b /u/b ; ack a
        > rejected wrong_state: item 1 (a): cannot acknowledge a job that is registered
        tx@ other.ext cancel a
        > rejected foreign_job: item 0 (a): the job belongs to another extension
        fetch process
        > [a]
        ",
    );
}

#[test]
fn transfer_events_follow_the_states_and_disable_cancels() {
    check(
        "
        tx create a /u/a ; create b /u/b ; create c /u/c
        > ok: a registered, b registered, c registered; count 3
        finish a ok 200
        > refused: cannot finish job a: it is registered
        start a
        > a pending
        start a
        > refused: cannot start job a: it is pending
        start b
        > b pending
        finish b fail 413 client_error
        > b failed status=413 error=client_error
        disable
        > cancelled: a cancelled acked, c cancelled acked; count 1
        # The transfer that was running still reports; the job is already cancelled.
        finish a ok 201
        > refused: cannot finish job a: it is cancelled
        tx cancel b
        > rejected wrong_state: item 0 (b): cannot cancel a job that is failed
        start zz
        > refused: no such job zz
        fetch acknowledge
        > [b]
        ",
    );
}
