//! State migrations on upgrade (issue 17): a facade may export
//! `migrate: func(from-version: string) -> result<_, string>` (bare or
//! `iface#migrate`). A replace whose new service starts from carried data
//! (`keep_data`, or data restored from a kept dir) calls it on the new
//! service after the data copy and before the init calls, with the package
//! version that wrote the data — only when that version differs from the new
//! one. An `err` or a trap fails the replace like a failing init call. A
//! package may declare `migrates_from` (the oldest version it migrates from);
//! an older deployed version is a plan error. The plan-time checks live here
//! (`check`), the call in `Deployer::run_migrate`.

use super::executor::{Deployer, StepFailure};
use super::model::{Current, DeployedKind, Desired, DesiredService};
use super::plan::{find_export, PlanError};
use crate::ids::ServiceId;
use crate::runtime::{FunctionSig, WitType};
use std::cmp::Ordering;

/// The export's name.
pub const FUNCTION: &str = "migrate";
/// The signature it must have, for messages.
pub const SIGNATURE: &str = "func(from-version: string) -> result<_, string>";

/// The facade's `migrate` export, if it has one.
pub fn find(sigs: &[FunctionSig]) -> Option<&FunctionSig> {
    find_export(sigs, FUNCTION)
}

/// Whether `sig` is `func(string) -> result<_, string>`.
pub fn has_signature(sig: &FunctionSig) -> bool {
    let param_ok = matches!(sig.params.as_slice(), [(_, WitType::String)]);
    let result_ok = matches!(sig.results.as_slice(),
        [WitType::Result { ok: None, err: Some(e) }] if **e == WitType::String);
    param_ok && result_ok
}

/// The version to migrate from, when data written by `data_version` is
/// carried into a service of `new_version` whose facade exports `migrate`:
/// `None` when the versions are equal (same release, nothing to migrate).
pub fn from_version<'a>(data_version: &'a str, new_version: &str, sigs: Option<&[FunctionSig]>) -> Option<&'a str> {
    let exported = sigs.and_then(find).is_some_and(has_signature);
    (exported && data_version != new_version).then_some(data_version)
}

/// Plan-time checks: every desired facade's `migrate` has the expected
/// signature; no deployed version of a package is older than the package's
/// `migrates_from`.
pub(super) fn check(desired: &Desired, current: &Current, errors: &mut Vec<PlanError>) {
    for p in &desired.packages {
        for s in &p.services {
            if let Some(sig) = desired.exports.get(&s.blueprint_id).and_then(|sigs| find(sigs)) {
                if !has_signature(sig) {
                    errors.push(PlanError::MigrateSignature {
                        package: s.package.clone(),
                        alias: s.alias.clone(),
                        function: sig.name.clone(),
                        found: sig.to_string(),
                    });
                }
            }
        }
        let Some(oldest) = &p.migrates_from else { continue };
        let mut gaps: Vec<&str> = current
            .deployed
            .values()
            .filter(|d| d.package == p.name)
            .map(|d| d.version.as_str())
            .filter(|v| crate::distro::manifest::compare_versions(v, oldest).is_none_or(|o| o == Ordering::Less))
            .collect();
        gaps.sort();
        gaps.dedup();
        for deployed in gaps {
            errors.push(PlanError::MigrationGap { package: p.name.clone(), deployed: deployed.to_string(), oldest: oldest.clone() });
        }
    }
}

impl Deployer {
    /// Calls `migrate(from)` on the new service `id` once (no retry: a
    /// half-run migration must not run again on its own output; the failed
    /// replace is rolled back and the next deployment starts from a fresh
    /// copy). An `err` or a trap is the step's failure.
    pub(super) async fn run_migrate(&self, s: &DesiredService, id: &ServiceId, from: &str) -> Result<(), StepFailure> {
        let sigs = match self.runtime.service_exports(id.as_str()) {
            Some(Ok(sigs)) => sigs,
            Some(Err(e)) => return Err(super::steps::fail(format!("reading the exports of service {id}: {e}"))),
            None => return Err(super::steps::fail(format!("service {id} does not exist"))),
        };
        let Some(sig) = find(&sigs) else { return Ok(()) };
        let args = serde_json::Value::Array(vec![serde_json::Value::String(from.to_string())]);
        tracing::info!(alias = %s.alias, package = %s.package, "migrate from {from} to {}", s.version);
        match self.runtime.call_with_ttl(id.as_str(), &sig.name, args, self.policy.call_ttl).await {
            Ok(value) => match super::steps::guest_error(sig, &value) {
                None => {
                    crate::failpoint::trace::event(|| format!("migrated {} from {from}", s.alias));
                    Ok(())
                }
                Some(message) => {
                    Err(StepFailure { message: format!("migrate from {from}: the service returned an error: {message}"), attempts: 1 })
                }
            },
            Err(e) => Err(StepFailure { message: format!("migrate from {from}: {e}"), attempts: 1 }),
        }
    }

    /// The version to migrate from for a replace of `s` onto new service `id`,
    /// read from the store (the entry, or the kept dir's record).
    pub(super) fn migrate_from_of(&self, s: &DesiredService, id: &ServiceId) -> Result<Option<String>, StepFailure> {
        let data_version = match &s.restore_data_from {
            Some(kept) => super::kept::get(self.journal.store(), kept).map_err(super::steps::fail)?.map(|k| k.version),
            None => self.journal.deployed().map_err(super::steps::fail)?.remove(&s.alias).and_then(|d| match d.kind {
                DeployedKind::Service { .. } => Some(d.version),
                DeployedKind::Spell { .. } => None,
            }),
        };
        let Some(data_version) = data_version else { return Ok(None) };
        let sigs = match self.runtime.service_exports(id.as_str()) {
            Some(Ok(sigs)) => sigs,
            _ => return Ok(None),
        };
        Ok(from_version(&data_version, &s.version, Some(&sigs)).map(str::to_string))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(name: &str, params: Vec<WitType>, results: Vec<WitType>) -> FunctionSig {
        FunctionSig { name: name.into(), params: params.into_iter().enumerate().map(|(i, t)| (format!("p{i}"), t)).collect(), results }
    }

    #[test]
    fn only_the_expected_signature_counts_and_only_a_changed_version_migrates() {
        let ok = sig("x:y/api#migrate", vec![WitType::String], vec![WitType::Result { ok: None, err: Some(Box::new(WitType::String)) }]);
        assert!(has_signature(&ok));
        assert!(!has_signature(&sig("migrate", vec![WitType::U32], ok.results.clone())));
        assert!(!has_signature(&sig("migrate", vec![WitType::String], vec![])));
        assert!(!has_signature(&sig(
            "migrate",
            vec![WitType::String],
            vec![WitType::Result { ok: Some(Box::new(WitType::U32)), err: Some(Box::new(WitType::String)) }]
        )));
        let sigs = vec![ok];
        assert_eq!(from_version("1.0.0", "2.0.0", Some(&sigs)), Some("1.0.0"));
        assert_eq!(from_version("2.0.0", "2.0.0", Some(&sigs)), None);
        assert_eq!(from_version("1.0.0", "2.0.0", Some(&[])), None);
        assert_eq!(from_version("1.0.0", "2.0.0", None), None);
    }
}
