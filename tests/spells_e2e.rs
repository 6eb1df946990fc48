//! The embedded system spells doing their job end to end: a real node
//! (embedded distros deployed into a temp state dir), the real spell engine
//! calling the real services through the runtime.

use serde_json::json;
use sysdeploy::config::{self, FlagValue, LoadOptions};
use sysdeploy::deploy::Outcome;
use sysdeploy::ids::Alias;
use sysdeploy::node::Node;
use sysdeploy::spell::RunStatus;

async fn node(dir: &std::path::Path) -> std::sync::Arc<Node> {
    let opts = LoadOptions { flags: vec![FlagValue::new("--state-dir", "node.state_dir", dir.to_string_lossy())], ..Default::default() };
    let catalog = sysdeploy::distro::embedded();
    let cfg = config::load(&opts, &catalog.schemas()).unwrap();
    let node = Node::open(cfg, opts, catalog).map_err(|e| e.message).unwrap();
    let report = node.deploy(vec![]).await.map_err(|e| e.message).unwrap();
    assert_eq!(report.outcome, Outcome::Ok, "{report:#?}");
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_spell_clears_expired_records_from_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path()).await;
    let rt = node.runtime();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    rt.call("registry", "register", json!(["ancient", "v", "12D3KooWA", 1_000])).await.unwrap();
    rt.call("registry", "register", json!(["fresh", "v", "12D3KooWA", now])).await.unwrap();
    assert_eq!(rt.call("registry", "count", json!([])).await.unwrap(), json!(2));

    let spell = Alias::new("registry-spell").unwrap();
    let out = node.spells().run_once(&spell).await.unwrap();
    assert_eq!(out.status, RunStatus::Ok, "{out:?}");
    assert_eq!(rt.call("registry", "count", json!([])).await.unwrap(), json!(1), "the expired record is gone");
    assert_eq!(rt.call("registry", "get", json!(["fresh"])).await.unwrap()["value"], json!("v"));
    let kv = node.spells().kv(&spell).unwrap();
    assert_eq!(kv["expired_period_sec"], json!(86400), "configured KV is there");
    assert_eq!(kv["total_cleared"], json!(1), "the spell records its progress: {kv:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decider_spell_drains_the_connector_queue_and_counts_progress() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path()).await;
    let rt = node.runtime();
    for i in 0..20 {
        rt.call("connector", "enqueue", json!([format!("deal-{i}")])).await.unwrap();
    }
    let spell = Alias::new("decider").unwrap();
    for _ in 0..2 {
        let out = node.spells().run_once(&spell).await.unwrap();
        assert_eq!(out.status, RunStatus::Ok, "{out:?}");
    }
    assert_eq!(rt.call("connector", "pending", json!([])).await.unwrap(), json!(0));
    assert_eq!(node.spells().kv(&spell).unwrap()["processed"], json!(20));
    assert!(node.spells().errors(&spell).is_empty());
    let metrics = node.metrics().render();
    assert!(
        metrics.lines().any(|l| l.starts_with("sysdeploy_spell_runs_total{alias=\"decider\"} 2")),
        "spell runs are counted per alias:\n{metrics}"
    );
}
