//! Advisories against single inferences, in the same run on the same server: throughput and
//! p99 at each concurrency of `POST /v1/advisory/transaction-review` (two model calls through
//! the one request path, the rule table, the audit record), with the facts in the request and
//! with the account's facts read from the feature store in Redis (`entities.account_id`, one
//! of 1000 accounts pushed first), against `POST /v2/models/trust-scorer/infer`. Every
//! request's amount (and input) is random, so advisories miss the advisory cache and
//! inferences the inference cache. The facts are those of an auto-cleared recorded case, so
//! no review item is written.

use crate::{start_server, wrk, Args};
use anyhow::{bail, Context, Result};
use invariant_blackbox::{free_port, trust_features, RedisServer};
use std::path::Path;

/// Accounts pushed to the feature store.
const ACCOUNTS: u32 = 1000;

/// A wrk script that POSTs `template` with `%s` replaced by a fresh random amount and `%k` by
/// a random account number each time.
fn varying_script(dir: &Path, name: &str, template: &str, path: &str) -> Result<std::path::PathBuf> {
    let file = dir.join(format!("{name}.lua"));
    let script = format!(
        "local threads = 0\n\
         function setup(thread) threads = threads + 1; thread:set(\"seed\", threads) end\n\
         function init(args) math.randomseed(seed * 7919 + os.time()) end\n\
         wrk.method = \"POST\"\nwrk.path = \"{path}\"\n\
         wrk.headers[\"Content-Type\"] = \"application/json\"\n\
         local template = [[{template}]]\n\
         request = function()\n  \
           local body = template:gsub(\"%%s\", string.format(\"%.6f\", 10 + math.random() * 900))\n  \
           body = body:gsub(\"%%k\", tostring(math.random(0, {last})))\n  \
           return wrk.format(nil, nil, nil, body)\nend\n\
         local shown = 0\n\
         response = function(status, headers, body)\n  \
           if status ~= 200 and shown < 3 then shown = shown + 1; print(\"NON2XX \" .. status .. \" \" .. body) end\nend\n",
        last = ACCOUNTS - 1
    );
    std::fs::write(&file, script)?;
    Ok(file)
}

/// Pushes the account rows of the case's facts for `acct-0` … into the running server.
fn push_accounts(base: &str, facts: &serde_json::Value) -> Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let n = ACCOUNTS as usize;
    let mut df = serde_json::json!({
        "account_id": (0..ACCOUNTS).map(|i| format!("acct-{i}")).collect::<Vec<_>>(),
        "event_timestamp": vec![now; n],
    });
    for k in trust_features() {
        df[&k] = serde_json::json!(vec![facts[&k].clone(); n]);
    }
    let body = serde_json::json!({"feature_view": "account_stats", "df": df});
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (status, text) = rt.block_on(async {
        let r = invariant_blackbox::http_client()
            .post(format!("{base}/v1/features/push"))
            .json(&body)
            .send()
            .await?;
        Ok::<_, reqwest::Error>((r.status(), r.text().await?))
    })?;
    if !status.is_success() {
        bail!("pushing the accounts: {status} {text}");
    }
    Ok(())
}

/// The section.
pub fn bench_advisory(args: &Args, scripts: &Path) -> Result<()> {
    let golden = std::fs::read_to_string("golden-vectors/pipelines/transaction-review/1.1.0.jsonl")
        .context("the transaction-review golden file (run from the workspace root)")?;
    let case: serde_json::Value = golden
        .lines()
        .skip(1)
        .map(serde_json::from_str)
        .find_map(|c: serde_json::Result<serde_json::Value>| c.ok().filter(|c| c["id"] == "000-clean-small"))
        .context("case 000-clean-small")?;
    let mut facts = case["facts"].clone();
    facts["amount_usd"] = serde_json::json!("AMOUNT");
    let advisory = serde_json::json!({ "facts": facts })
        .to_string()
        .replace("\"AMOUNT\"", "%s");
    let mut txn = facts.clone();
    for k in trust_features() {
        txn.as_object_mut().context("facts")?.remove(&k);
    }
    let from_store = serde_json::json!({ "facts": txn, "entities": {"account_id": "acct-ACCOUNT"} })
        .to_string()
        .replace("\"AMOUNT\"", "%s")
        .replace("acct-ACCOUNT", "acct-%k");
    let infer = r#"{"inputs":[{"name":"features","shape":[1,8],"datatype":"FP32","data":[%s,120,0.01,4.8,2,3,0,0]}]}"#;
    let redis = RedisServer::start();
    let port = free_port();
    let env = [
        ("INVARIANT_FEATURE_BACKEND", "redis".to_string()),
        ("INVARIANT_FEATURE_REDIS_URL", redis.url()),
        // The shipped bulkhead (16 feature calls in flight per corridor) answers 429 past it,
        // which concurrency 32 reaches: the benchmark measures throughput, not shedding.
        ("INVARIANT_POOLS__FEATURE_CONCURRENCY", "64".to_string()),
    ];
    let server = start_server(&args.binary, port, &env)?;
    let base = format!("http://127.0.0.1:{port}");
    push_accounts(&base, &case["facts"])?;
    let path = "/v1/advisory/transaction-review";
    let a = varying_script(scripts, "advisory", &advisory, path)?;
    let f = varying_script(scripts, "advisory-redis", &from_store, path)?;
    let i = varying_script(scripts, "advisory-infer", infer, "/v2/models/trust-scorer/infer")?;
    println!(
        "\n# advisories (transaction-review 1.1.0: 2 models + rules + audit; facts in the request, or the \
         account's from Redis) vs single inferences (trust-scorer), all uncached, same server"
    );
    println!(
        "{:>4} {:>12} {:>10} {:>12} {:>10} {:>7} {:>12} {:>10} {:>7}",
        "conc", "infer req/s", "infer p99", "facts req/s", "facts p99", "ratio", "redis req/s", "redis p99", "ratio"
    );
    for &c in &args.concurrency {
        let inf = wrk(&base, c, args.http_seconds, Some(&i)).context("single inferences")?;
        let adv = wrk(&base, c, args.http_seconds, Some(&a)).context("advisories, facts in the request")?;
        let red = wrk(&base, c, args.http_seconds, Some(&f)).context("advisories, account facts from Redis")?;
        println!(
            "{c:>4} {:>12.0} {:>8.2}ms {:>12.0} {:>8.2}ms {:>7.2} {:>12.0} {:>8.2}ms {:>7.2}",
            inf.requests_per_s,
            inf.p99_ms,
            adv.requests_per_s,
            adv.p99_ms,
            adv.requests_per_s / inf.requests_per_s,
            red.requests_per_s,
            red.p99_ms,
            red.requests_per_s / inf.requests_per_s
        );
    }
    drop(server);
    Ok(())
}
