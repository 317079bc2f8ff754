//! Advisories against single inferences, in the same run on the same server: throughput and
//! p99 at each concurrency of `POST /v1/advisory/transaction-review` (two model calls through
//! the one request path, the rule table, the audit record) with facts that differ on every
//! request (advisory-cache misses), against `POST /v2/models/trust-scorer/infer` with inputs
//! that differ on every request (inference-cache misses). The facts are those of an
//! auto-cleared recorded case, so no review item is written.

use crate::{start_server, wrk, Args};
use anyhow::{Context, Result};
use invariant_blackbox::free_port;
use std::path::Path;

/// A wrk script that POSTs `template` with `%s` replaced by a fresh random number each time.
fn varying_script(dir: &Path, name: &str, template: &str, path: &str) -> Result<std::path::PathBuf> {
    let file = dir.join(format!("{name}.lua"));
    let script = format!(
        "local threads = 0\n\
         function setup(thread) threads = threads + 1; thread:set(\"seed\", threads) end\n\
         function init(args) math.randomseed(seed * 7919 + os.time()) end\n\
         wrk.method = \"POST\"\nwrk.path = \"{path}\"\n\
         wrk.headers[\"Content-Type\"] = \"application/json\"\n\
         local template = [[{template}]]\n\
         request = function()\n  local body = template:gsub(\"%%s\", string.format(\"%.6f\", 10 + math.random() * 900))\n  return wrk.format(nil, nil, nil, body)\nend\n"
    );
    std::fs::write(&file, script)?;
    Ok(file)
}

/// The section.
pub fn bench_advisory(args: &Args, scripts: &Path) -> Result<()> {
    let golden = std::fs::read_to_string("golden-vectors/pipelines/transaction-review/1.0.0.jsonl")
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
    let infer = r#"{"inputs":[{"name":"features","shape":[1,8],"datatype":"FP32","data":[%s,120,0.01,4.8,2,3,0,0]}]}"#;
    let port = free_port();
    let server = start_server(&args.binary, port, &[])?;
    let base = format!("http://127.0.0.1:{port}");
    let a = varying_script(scripts, "advisory", &advisory, "/v1/advisory/transaction-review")?;
    let i = varying_script(scripts, "advisory-infer", infer, "/v2/models/trust-scorer/infer")?;
    println!("\n# advisories (transaction-review: 2 models + rules + audit) vs single inferences (trust-scorer), both uncached, same server");
    println!(
        "{:>4} {:>12} {:>10} {:>12} {:>10} {:>9}",
        "conc", "infer req/s", "infer p99", "advice req/s", "advice p99", "ratio"
    );
    for &c in &args.concurrency {
        let inf = wrk(&base, c, args.http_seconds, Some(&i))?;
        let adv = wrk(&base, c, args.http_seconds, Some(&a))?;
        println!(
            "{c:>4} {:>12.0} {:>8.2}ms {:>12.0} {:>8.2}ms {:>9.2}",
            inf.requests_per_s,
            inf.p99_ms,
            adv.requests_per_s,
            adv.p99_ms,
            adv.requests_per_s / inf.requests_per_s
        );
    }
    drop(server);
    Ok(())
}
