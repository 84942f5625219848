//! Keeps docs/protocol.md honest: every JSON example tagged with a type name (```json Name)
//! must parse into that Rust type and serialise back to the same JSON (so a misspelt or
//! invented field, which serde would otherwise ignore, fails too), and every type and method
//! the protocol has must appear in the doc.

use ferry_extension::protocol::*;
use serde::Serialize;
use serde::de::DeserializeOwned;

fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/protocol.md");
    std::fs::read_to_string(path).expect("docs/protocol.md")
}

/// (line number, type name, block text) of every tagged example.
fn examples(doc: &str) -> Vec<(usize, String, String)> {
    let mut out = Vec::new();
    let mut open: Option<(usize, String, String)> = None;
    for (i, line) in doc.lines().enumerate() {
        match &mut open {
            None => {
                if let Some(tag) = line.strip_prefix("```json ") {
                    open = Some((i + 1, tag.trim().to_owned(), String::new()));
                }
            }
            Some((_, _, body)) => {
                if line.trim_start().starts_with("```") {
                    out.extend(open.take());
                } else {
                    body.push_str(line);
                    body.push('\n');
                }
            }
        }
    }
    assert!(open.is_none(), "unclosed example block");
    out
}

fn round_trip<T: DeserializeOwned + Serialize>(line: usize, body: &str) {
    let original: serde_json::Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("docs/protocol.md:{line}: not JSON: {e}"));
    let typed: T = serde_json::from_value(original.clone()).unwrap_or_else(|e| {
        panic!(
            "docs/protocol.md:{line}: not a {}: {e}",
            std::any::type_name::<T>()
        )
    });
    let again = serde_json::to_value(&typed).unwrap();
    assert_eq!(
        again, original,
        "docs/protocol.md:{line}: the example does not survive a round trip (a field the type \
         does not have, or one it always writes?)"
    );
}

#[test]
fn every_tagged_example_parses_into_its_type() {
    let doc = doc();
    let examples = examples(&doc);
    let mut seen = std::collections::BTreeSet::new();
    for (line, name, body) in &examples {
        seen.insert(name.clone());
        match name.as_str() {
            "Message" => {
                let text = body.trim_end_matches('\n');
                assert!(
                    !text.contains('\n'),
                    "docs/protocol.md:{line}: a message is one line"
                );
                let msg = Message::parse(text.as_bytes())
                    .unwrap_or_else(|e| panic!("docs/protocol.md:{line}: {e}"));
                let back = msg.to_line();
                assert_eq!(Message::parse(&back[..back.len() - 1]).unwrap(), msg);
            }
            "InitializeParams" => round_trip::<InitializeParams>(*line, body),
            "InitializeResult" => round_trip::<InitializeResult>(*line, body),
            "ProcessJobsParams" => round_trip::<ProcessJobsParams>(*line, body),
            "ProcessJobsResult" => round_trip::<ProcessJobsResult>(*line, body),
            "WillTerminateParams" => round_trip::<WillTerminateParams>(*line, body),
            "TokenResult" => round_trip::<TokenResult>(*line, body),
            "ChangesParams" => round_trip::<ChangesParams>(*line, body),
            "ChangesResult" => round_trip::<ChangesResult>(*line, body),
            "AssetsParams" => round_trip::<AssetsParams>(*line, body),
            "AssetsResult" => round_trip::<AssetsResult>(*line, body),
            "ListAssetsParams" => round_trip::<ListAssetsParams>(*line, body),
            "ListAssetsResult" => round_trip::<ListAssetsResult>(*line, body),
            "FetchParams" => round_trip::<FetchParams>(*line, body),
            "FetchResult" => round_trip::<FetchResult>(*line, body),
            "TransactionParams" => round_trip::<TransactionParams>(*line, body),
            "TransactionResult" => round_trip::<TransactionResult>(*line, body),
            "LimitResult" => round_trip::<LimitResult>(*line, body),
            "KvGetParams" => round_trip::<KvGetParams>(*line, body),
            "KvGetResult" => round_trip::<KvGetResult>(*line, body),
            "KvSetParams" => round_trip::<KvSetParams>(*line, body),
            "KvGetManyParams" => round_trip::<KvGetManyParams>(*line, body),
            "KvGetManyResult" => round_trip::<KvGetManyResult>(*line, body),
            "KvSetManyParams" => round_trip::<KvSetManyParams>(*line, body),
            "KvListParams" => round_trip::<KvListParams>(*line, body),
            "KvListResult" => round_trip::<KvListResult>(*line, body),
            "Empty" => round_trip::<Empty>(*line, body),
            "MigrationPreflightResult" => round_trip::<MigrationPreflightResult>(*line, body),
            "MigrationExportParams" => round_trip::<MigrationExportParams>(*line, body),
            "ArchiveAppendParams" => round_trip::<ArchiveAppendParams>(*line, body),
            "ArchiveAppendResult" => round_trip::<ArchiveAppendResult>(*line, body),
            "MigrationImportParams" => round_trip::<MigrationImportParams>(*line, body),
            "ImportStatus" => round_trip::<ImportStatus>(*line, body),
            "RpcError" => {
                round_trip::<RpcError>(*line, body);
                let e: RpcError = serde_json::from_str(body).unwrap();
                let code = e.kind().expect("a Ferry error code");
                assert_eq!(code.number(), e.code, "docs/protocol.md:{line}");
            }
            other => panic!("docs/protocol.md:{line}: unknown example type {other:?}"),
        }
    }
    // Every message shape of the protocol has at least one example.
    for required in [
        "Message",
        "InitializeParams",
        "InitializeResult",
        "ProcessJobsParams",
        "ProcessJobsResult",
        "WillTerminateParams",
        "TokenResult",
        "ChangesParams",
        "ChangesResult",
        "AssetsParams",
        "AssetsResult",
        "ListAssetsParams",
        "ListAssetsResult",
        "FetchParams",
        "FetchResult",
        "TransactionParams",
        "TransactionResult",
        "LimitResult",
        "KvGetParams",
        "KvGetResult",
        "KvSetParams",
        "KvListParams",
        "KvListResult",
        "KvGetManyParams",
        "KvGetManyResult",
        "KvSetManyParams",
        "RpcError",
        "MigrationPreflightResult",
        "MigrationExportParams",
        "ArchiveAppendParams",
        "ArchiveAppendResult",
        "MigrationImportParams",
        "ImportStatus",
    ] {
        assert!(seen.contains(required), "no example of {required}");
    }
}

#[test]
fn every_method_error_code_and_limit_is_documented() {
    let doc = doc();
    for m in HOST_METHODS.iter().chain(&MIGRATION_HOST_METHODS).chain(&[
        INITIALIZE,
        PROCESS_JOBS,
        WILL_TERMINATE,
        MIGRATION_PREFLIGHT,
        MIGRATION_EXPORT,
        MIGRATION_IMPORT,
    ]) {
        assert!(doc.contains(&format!("`{m}`")), "method {m} not documented");
    }
    for c in ErrorCode::ALL {
        let row = format!("| {} | `{}` |", c.number(), c.name());
        assert!(
            doc.contains(&row),
            "error {c:?} not in the table as {row:?}"
        );
        let transient_mark = doc
            .lines()
            .find(|l| l.starts_with(&row))
            .is_some_and(|l| l.contains("**transient**"));
        assert_eq!(
            transient_mark,
            c.is_transient(),
            "{c:?}: the doc and ErrorCode::is_transient disagree"
        );
    }
    assert!(doc.contains("1 MiB") && MAX_MESSAGE_BYTES == 1024 * 1024);
    assert!(doc.contains("64 KiB") && MAX_KV_VALUE_BYTES == 64 * 1024);
    assert!(doc.contains("256 B") && MAX_KV_KEY_BYTES == 256);
    assert!(doc.contains("64 MiB") && MAX_KV_TOTAL_BYTES == 64 * 1024 * 1024);
    assert!(doc.contains("10,000") && MAX_CHANGES_PAGE_ITEMS == 10_000);
    assert!(
        doc.contains(&format!("| {MAX_BAD_LINES} per launch, each answered"))
            && doc.contains(&format!("answers at most **{MAX_BAD_LINES}** such lines")),
        "the number of unreadable lines Ferry answers ({MAX_BAD_LINES}) is not documented"
    );
    assert!(doc.contains(&format!("version {PROTOCOL_VERSION}")));
    assert!(doc.contains(&format!("version {MIGRATION_PROTOCOL_VERSION}")));
    for reason in ["migration_idle", "cancelled"] {
        assert!(doc.contains(&format!("`{reason}`")), "reason {reason}");
    }
}
