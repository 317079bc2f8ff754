//! In-process tests of the serving core, without any transport: guard order and refusal
//! (computed answers and stored replies alike), deadlines, overload, batching bits and single
//! flight.

use invariant_core::{Tensor, TensorData};
use invariant_serving::config::Config;
use invariant_serving::guards::{Admit, Guard, Outcome, RequestContext};
use invariant_serving::{InferBody, InferenceService, ServeError, Source, Target, Transport};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn config(extra: &str) -> Config {
    let dir = tempfile::tempdir().unwrap().keep();
    let text = format!(
        r#"model_repository = "{root}/models"
golden_vectors = "{root}/golden-vectors"
state_dir = "{state}"
registry_state = "{state}/registry.json"
feature_repository = "{state}/no-features"
onnxruntime_lib = "{root}/.deps/onnxruntime/lib/libonnxruntime.so"
engine_instances = 1
{extra}
[server]
http_addr = "127.0.0.1:0"
max_body_bytes = 1048576
default_corridor = "UAE-SA"
[[corridors]]
id = "UAE-SA"
market = 0
region = "gcc"
"#,
        root = root().display(),
        state = dir.display(),
    );
    let path = dir.join("invariant.toml");
    std::fs::write(&path, text).unwrap();
    let mut config = Config::load(Some(&path)).unwrap();
    config.auth.disabled_for_development = true;
    config
}

/// Records every admit and observe, and refuses one model.
#[derive(Debug)]
struct Recorder {
    name: &'static str,
    refuse: Option<&'static str>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Guard for Recorder {
    fn name(&self) -> &'static str {
        self.name
    }
    fn admit(&self, ctx: &RequestContext<'_>) -> Result<Admit, ServeError> {
        self.log
            .lock()
            .unwrap()
            .push(format!("{} admit {}", self.name, ctx.model));
        if self.refuse == Some(ctx.model) {
            return Err(ServeError::unavailable(format!("{} refuses {}", self.name, ctx.model)));
        }
        Ok(Admit::Full)
    }
    fn observe(&self, ctx: &RequestContext<'_>, outcome: &Outcome<'_>) {
        let how = match outcome.result {
            Ok(source) => source.name().to_string(),
            Err(e) => format!("error {}", e.kind().name()),
        };
        self.log
            .lock()
            .unwrap()
            .push(format!("{} observe {} {how}", self.name, ctx.model));
    }
}

fn trust_rows(rows: &[[f32; 8]]) -> InferBody {
    let data: Vec<f32> = rows.iter().flatten().copied().collect();
    InferBody {
        inputs: vec![Tensor::new("features", vec![rows.len(), 8], TensorData::Fp32(data), "t").unwrap()],
        ..Default::default()
    }
}

const ROW: [f32; 8] = [420.0, 57.0, 0.02, 4.6, 3.5, 2.0, 1.0, 0.0];

fn target(model: &str) -> Target {
    Target::new(model, Some("1.2.0".into()), Transport::InProcess)
}

fn bits(r: &invariant_serving::InferResponse) -> Vec<u64> {
    r.outputs[0].data.element_bits()
}

#[tokio::test]
async fn guards_admit_in_order_and_observe_every_outcome_including_stored_replies() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let guards: Vec<Box<dyn Guard>> = vec![
        Box::new(Recorder {
            name: "a",
            refuse: None,
            log: log.clone(),
        }),
        Box::new(Recorder {
            name: "b",
            refuse: Some("risk-assessor"),
            log: log.clone(),
        }),
    ];
    let service = InferenceService::build_with(config(""), guards).unwrap();
    assert_eq!(&service.guards.names()[..2], ["a", "b"]);

    let r = service
        .infer_body(target("trust-scorer"), trust_rows(&[ROW]))
        .await
        .unwrap();
    assert_eq!(r.source, Source::Computed);
    assert_eq!(
        std::mem::take(&mut *log.lock().unwrap()),
        [
            "a admit trust-scorer",
            "b admit trust-scorer",
            "a observe trust-scorer computed",
            "b observe trust-scorer computed"
        ]
    );

    // A refusal stops admission and is observed by every guard, before any engine runs.
    let refused = service
        .infer_body(
            Target::new("risk-assessor", None, Transport::InProcess),
            InferBody::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(refused, ServeError::unavailable("b refuses risk-assessor"));
    assert_eq!(
        std::mem::take(&mut *log.lock().unwrap()),
        [
            "a admit risk-assessor",
            "b admit risk-assessor",
            "a observe risk-assessor error unavailable",
            "b observe risk-assessor error unavailable"
        ]
    );

    // A body that does not decode is observed too (no admission: nothing was routed).
    let bad = service
        .infer(target("trust-scorer"), || {
            Err(ServeError::invalid("inputs[0].data: bad"))
        })
        .await
        .unwrap_err();
    assert_eq!(bad.kind(), invariant_serving::ErrorKind::InvalidArgument);
    assert_eq!(
        std::mem::take(&mut *log.lock().unwrap()),
        [
            "a observe trust-scorer error invalid_argument",
            "b observe trust-scorer error invalid_argument"
        ]
    );

    // A stored reply is admitted and observed like the answer it repeats.
    let key = [7u8; 32];
    service
        .store_reply(
            &r,
            key,
            bytes::Bytes::from_static(b"id"),
            invariant_serving::service::StoredReply {
                bytes: bytes::Bytes::from_static(b"reply"),
                header_length: Some(3),
            },
        )
        .await;
    let metadata = Default::default();
    let hit = service
        .stored_reply(
            "UAE-SA",
            &key,
            |id| id == b"id",
            &metadata,
            Transport::HttpJson,
            tokio::time::Instant::now(),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!((&hit.bytes[..], hit.header_length), (&b"reply"[..], Some(3)));
    assert_eq!(
        std::mem::take(&mut *log.lock().unwrap()),
        [
            "a admit trust-scorer",
            "b admit trust-scorer",
            "a observe trust-scorer reply",
            "b observe trust-scorer reply"
        ]
    );
    assert!(service
        .stored_reply(
            "UAE-SA",
            &key,
            |id| id == b"other",
            &metadata,
            Transport::HttpJson,
            tokio::time::Instant::now()
        )
        .await
        .is_none());
    // An invalid deadline is refused on a stored reply as on a computed answer.
    let bad_deadline = invariant_serving::Metadata {
        deadline_ms: Some("soon".into()),
        ..Default::default()
    };
    let refused = service
        .stored_reply(
            "UAE-SA",
            &key,
            |id| id == b"id",
            &bad_deadline,
            Transport::HttpJson,
            tokio::time::Instant::now(),
        )
        .await
        .unwrap()
        .unwrap_err();
    assert!(refused.message().contains("x-deadline-ms"), "{refused}");
}

#[tokio::test]
async fn batched_rows_keep_their_bits_and_identical_misses_compute_once() {
    let service = InferenceService::build(config("")).unwrap();
    let alone = service
        .infer_body(target("trust-scorer"), trust_rows(&[ROW]))
        .await
        .unwrap();
    let rows: Vec<[f32; 8]> = (0..16)
        .map(|i| {
            let mut r = ROW;
            r[0] = i as f32;
            r
        })
        .collect();
    // Concurrent requests of different rows share batches; each row keeps the bits it has alone.
    let each = futures_util::future::join_all(
        rows.iter()
            .map(|r| service.infer_body(target("trust-scorer"), trust_rows(&[*r]))),
    )
    .await;
    for (r, got) in rows.iter().zip(each) {
        let single = InferenceService::build(config("[cache]\nenabled = false")).unwrap();
        let expected = single
            .infer_body(target("trust-scorer"), trust_rows(&[*r]))
            .await
            .unwrap();
        assert_eq!(bits(&got.unwrap()), bits(&expected));
    }
    // Identical concurrent misses: one computes, the others wait for it (single flight).
    let mut other = ROW;
    other[1] = 999.0;
    let before = service
        .stats
        .version("trust-scorer", "1.2.0")
        .execution_count
        .load(std::sync::atomic::Ordering::Relaxed);
    let same = futures_util::future::join_all(
        (0..8).map(|_| service.infer_body(target("trust-scorer"), trust_rows(&[other]))),
    )
    .await;
    let sources: Vec<Source> = same.iter().map(|r| r.as_ref().unwrap().source).collect();
    assert_eq!(
        sources.iter().filter(|s| **s == Source::Computed).count(),
        1,
        "{sources:?}"
    );
    let after = service
        .stats
        .version("trust-scorer", "1.2.0")
        .execution_count
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(after - before, 1);
    assert_ne!(bits(same[0].as_ref().unwrap()), bits(&alone));
}

#[tokio::test]
async fn deadlines_and_overload_are_errors_of_their_kind() {
    let service = InferenceService::build(config("")).unwrap();
    let mut t = target("trust-scorer");
    t.metadata.deadline_ms = Some("-5".into());
    let e = service.infer_body(t, trust_rows(&[ROW])).await.unwrap_err();
    assert_eq!(e.kind(), invariant_serving::ErrorKind::InvalidArgument);
    assert!(e.message().contains("x-deadline-ms"), "{e}");
    // A request that arrived long ago is past its 1 ms deadline.
    let mut t = target("price-advisor");
    t.version = None;
    t.metadata.deadline_ms = Some("1".into());
    t.started = tokio::time::Instant::now() - std::time::Duration::from_millis(50);
    let body = InferBody {
        inputs: vec![Tensor::new("features", vec![1, 6], TensorData::Fp32(vec![1.0; 6]), "t").unwrap()],
        ..Default::default()
    };
    let e = service.infer_body(t, body).await.unwrap_err();
    assert_eq!(e.kind(), invariant_serving::ErrorKind::DeadlineExceeded, "{e}");

    // A full corridor answers overloaded at once, with a retry hint.
    let pool = invariant_serving::pool::CorridorPool::new(
        "UAE-SA",
        invariant_serving::pool::PoolSizes { workers: 1, queue: 0 },
        invariant_serving::pool::BatchSettings {
            enabled: false,
            max_queue_delay: std::time::Duration::ZERO,
        },
    );
    let _first = pool.admit().unwrap();
    match pool.admit().err() {
        Some(ServeError::Overloaded { retry_after_s, message }) => {
            assert_eq!(retry_after_s, 1);
            assert!(message.contains("UAE-SA"), "{message}");
        }
        other => panic!("expected overload, got {other:?}"),
    }
}

/// A service that requires API keys, and a key store on its key file.
fn keyed_service() -> (Arc<InferenceService>, invariant_auth::KeyStore, invariant_auth::Pepper) {
    let mut c = config("");
    c.auth.disabled_for_development = false;
    c.control.poll_ms = 20;
    let pepper = invariant_auth::Pepper::load(&c.pepper_path(), true).unwrap().unwrap();
    let store = invariant_auth::KeyStore::new(c.open_control().unwrap());
    (InferenceService::build(c).unwrap(), store, pepper)
}

fn key(
    store: &invariant_auth::KeyStore,
    pepper: &invariant_auth::Pepper,
    roles: &[&str],
    corridors: &[&str],
) -> invariant_auth::NewKey {
    let roles = roles.iter().map(|r| invariant_auth::Role::parse(r).unwrap()).collect();
    let corridors = invariant_auth::Corridors::parse(corridors).unwrap();
    store.create(pepper, "test", roles, &corridors, "test").unwrap()
}

fn keyed(model: &str, key: Option<&str>, corridor: Option<&str>) -> Target {
    let mut t = target(model);
    t.metadata.authorization = key.map(|k| format!("Bearer {k}"));
    t.metadata.corridor = corridor.map(str::to_string);
    t
}

async fn wait_until(mut ok: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while !ok() {
        assert!(std::time::Instant::now() < deadline, "not within 1 s");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn keys_are_checked_before_the_model_and_scoped_to_their_corridors_and_roles() {
    use invariant_serving::ErrorKind::{NotFound, PermissionDenied, Unauthenticated};
    let (service, store, pepper) = keyed_service();
    // No key, a malformed one, an unknown one: 401 before anything else, even for a model
    // that does not exist.
    for k in [None, Some("nonsense"), Some("inv_0000000000000000_00")] {
        let e = service
            .infer_body(keyed("no-such-model", k, None), trust_rows(&[ROW]))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), Unauthenticated, "{k:?}: {e}");
    }
    let uae = key(&store, &pepper, &["infer"], &["UAE-SA"]);
    wait_until(|| service.authority.active_keys() == 1).await;
    let ok = service
        .infer_body(
            keyed("trust-scorer", Some(&uae.secret), Some("UAE-SA")),
            trust_rows(&[ROW]),
        )
        .await
        .unwrap();
    assert_eq!(ok.corridor.as_str(), "UAE-SA");
    // The default corridor is UAE-SA: allowed without naming it.
    service
        .infer_body(keyed("trust-scorer", Some(&uae.secret), None), trust_rows(&[ROW]))
        .await
        .unwrap();
    // Another corridor, by header or by parameters, declared or not, and whether the model
    // exists or not: 403, the same answer.
    let mut denials = Vec::new();
    for (model, corridor) in [
        ("trust-scorer", "UK-NG"),
        ("no-such-model", "UK-NG"),
        ("no-such-model", "FR-MA"),
    ] {
        let e = service
            .infer_body(keyed(model, Some(&uae.secret), Some(corridor)), trust_rows(&[ROW]))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), PermissionDenied, "{model} {corridor}: {e}");
        denials.push(e.message().replace(corridor, "C"));
    }
    assert!(denials.windows(2).all(|w| w[0] == w[1]), "{denials:?}");
    let mut body = trust_rows(&[ROW]);
    body.parameters.insert("corridor".into(), "US-EG".into());
    let e = service
        .infer_body(keyed("trust-scorer", Some(&uae.secret), None), body)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), PermissionDenied, "{e}");
    // Within its corridor an unknown model is an ordinary 404.
    let e = service
        .infer_body(
            keyed("no-such-model", Some(&uae.secret), Some("UAE-SA")),
            trust_rows(&[ROW]),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), NotFound, "{e}");
    // A key without the infer role.
    let reader = key(&store, &pepper, &["features:read"], &["*"]);
    wait_until(|| service.authority.active_keys() == 2).await;
    let e = service
        .infer_body(
            keyed("trust-scorer", Some(&reader.secret), Some("UAE-SA")),
            trust_rows(&[ROW]),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), PermissionDenied, "{e}");
    // Revoked: refused within the refresh period.
    store.revoke(&uae.record.id, "test").unwrap();
    wait_until(|| service.authority.active_keys() == 1).await;
    let e = service
        .infer_body(
            keyed("trust-scorer", Some(&uae.secret), Some("UAE-SA")),
            trust_rows(&[ROW]),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), Unauthenticated, "{e}");
    assert!(e.message().contains("revoked"), "{e}");
}
