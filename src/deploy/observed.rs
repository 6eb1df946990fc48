//! The one observed truth: what the deployer recorded (its entries) joined
//! with what exists (every alias, service and spell in the store). `plan`,
//! `recover`, `status` and `/v1/services` all read it from here, so they
//! cannot disagree about what is deployed.

use super::journal::Journal;
use super::model::{AliasHolder, Current, Deployed, ObservedService, ObservedSpell};
use crate::ids::{Alias, PeerId, ServiceId};
use crate::runtime::{records, AliasTarget};
use crate::store::Store;
use std::collections::BTreeMap;

/// The store could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error("reading the deployer's records: {0}")]
    Journal(#[from] rusqlite::Error),
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error("reading the spells: {0}")]
    Spells(#[from] crate::spell::SpellError),
}

/// Reads the observed state from `store` (read-only; works on a store opened
/// with `Store::open_read_only` while a node runs). `host` is recorded in it
/// for the planner (`None` for a listing that plans nothing).
pub fn observe(store: &Store, host: Option<&PeerId>) -> Result<Current, ObserveError> {
    let deployed = Journal::new(store.clone()).deployed()?;
    let aliases = alias_holders(records::aliases(store)?);
    let services = records::services(store)?
        .into_iter()
        .map(|r| (r.id, ObservedService { owner: r.owner, blueprint_id: r.blueprint_id, created_at: r.created_at }))
        .collect();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let spells = crate::spell::read_spells(store, now)?
        .into_iter()
        .map(|s| (s.alias.clone(), ObservedSpell { id: s.id.as_str().to_string(), owner: s.owner }))
        .collect();
    let kept = super::kept::by_id(store)?;
    Ok(Current { host: host.cloned(), deployed, aliases, services, spells, kept })
}

/// Who holds each bound alias, as the planner sees it.
pub fn alias_holders(bindings: Vec<crate::runtime::AliasBinding>) -> BTreeMap<Alias, AliasHolder> {
    bindings
        .into_iter()
        .map(|b| {
            let (kind, target) = match &b.target {
                AliasTarget::Service(id) => ("service", id.to_string()),
                AliasTarget::Spell(id) => ("spell", id.clone()),
            };
            (b.alias, AliasHolder { owner: b.owner, kind: kind.into(), target })
        })
        .collect()
}

/// One deployed service as `status` and `/v1/services` list it: every
/// service the runtime records (so an orphan shows, with no alias), its
/// aliases, and the entry that records it (by service id, so a service whose
/// alias was lost still shows its package).
#[derive(Debug, Clone)]
pub struct ListedService<'a> {
    pub id: &'a ServiceId,
    pub service: &'a ObservedService,
    pub aliases: Vec<Alias>,
    pub entry: Option<&'a Deployed>,
}

impl Current {
    /// What is deployed, service by service (see [`ListedService`]).
    pub fn list_services(&self) -> Vec<ListedService<'_>> {
        let mut out: Vec<ListedService<'_>> = self
            .services
            .iter()
            .map(|(id, service)| {
                let aliases =
                    self.aliases.iter().filter(|(_, h)| h.kind == "service" && h.target == id.as_str()).map(|(a, _)| a.clone()).collect();
                let entry = self
                    .deployed
                    .values()
                    .find(|d| matches!(&d.kind, super::model::DeployedKind::Service { service_id, .. } if service_id == id));
                ListedService { id, service, aliases, entry }
            })
            .collect();
        out.sort_by(|a, b| (a.service.created_at, a.id.as_str()).cmp(&(b.service.created_at, b.id.as_str())));
        out
    }
}
