//! The human review queue: what the AI flags, a person decides. Items enter a corridor's
//! queue (submitted directly, or by an advisory that needs review) with a priority P0–P5 and
//! the SLA of that priority (P0 escrow disputes 2 h, P1 high value 4 h, P2 high-risk flags
//! 4 h, P3 trust verification 8 h, P4 standard 24 h, P5 low-risk spot checks 48 h; all
//! configurable). Reviewers list, claim, resolve (approve or reject, with a note), release and
//! escalate items.
//!
//! - **One owner at a time.** Changes are serialised; a claim is refused while another
//!   reviewer's claim on the item is live, so concurrent claims never give one item to two
//!   reviewers. A claim expires `claim_ttl_ms` after it was taken (the item is open again; the
//!   expired claimant can no longer resolve it).
//! - **Deterministic order:** priority, then SLA deadline, then id (ids are the corridor and a
//!   per-corridor sequence number, so equal deadlines keep their arrival order).
//! - **Durable:** every change is committed to the redb file (fsynced) before it returns, so
//!   nothing acknowledged is lost to `kill -9`.
//! - **Overflow signals** ([`Queue::summary`]): the oldest P4 item above 8 h suggests lowering
//!   the corridor's auto-clear threshold (an operator's audited action: never automatic),
//!   P2 above 4 h raises an alert with a throttling suggestion, P0 above 2 h an escalation.
//!
//! Every operation takes the time (`now_ms`, Unix milliseconds) from the caller, so the rules
//! are pure functions of the stored items and that time.

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use thiserror::Error;

pub mod redis_queue;

const ITEMS: TableDefinition<&str, &[u8]> = TableDefinition::new("review_items");
const SEQUENCES: TableDefinition<&str, u64> = TableDefinition::new("review_sequences");

/// Review priority: P0 (most urgent) … P5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Priority {
    /// Escrow disputes.
    P0,
    /// High value (over $1000).
    P1,
    /// High-risk flags.
    P2,
    /// Trust verification.
    P3,
    /// Standard.
    P4,
    /// Low-risk spot checks.
    P5,
}

impl Priority {
    /// Every priority, most urgent first.
    pub const ALL: [Priority; 6] = [
        Priority::P0,
        Priority::P1,
        Priority::P2,
        Priority::P3,
        Priority::P4,
        Priority::P5,
    ];

    /// `P0` … `P5`.
    pub fn name(self) -> &'static str {
        ["P0", "P1", "P2", "P3", "P4", "P5"][self.index()]
    }

    fn index(self) -> usize {
        self as usize
    }

    /// Parses `P0` … `P5` (case-insensitive).
    pub fn parse(text: &str) -> Result<Priority, ReviewError> {
        Priority::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(text))
            .ok_or_else(|| ReviewError::Invalid(format!("priority '{text}' is not one of P0, P1, P2, P3, P4, P5")))
    }

    /// One level more urgent (P0 stays P0).
    pub fn raised(self) -> Priority {
        Priority::ALL[self.index().saturating_sub(1)]
    }
}

/// `[review]` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// SLA hours of P0 … P5.
    pub sla_hours: [f64; 6],
    /// How long a claim lasts unless the item is resolved or released, in ms.
    pub claim_ttl_ms: u64,
    /// An open item is near its SLA breach when less than this share of its SLA is left.
    pub near_breach_share: f64,
    /// The oldest P4 item above this many hours suggests lowering the auto-clear threshold.
    pub p4_lower_threshold_hours: f64,
    /// The oldest P2 item above this many hours raises an alert and a throttling suggestion.
    pub p2_alert_hours: f64,
    /// The oldest P0 item above this many hours is escalated.
    pub p0_escalation_hours: f64,
    /// Unresolved items one corridor may hold; past it, submissions are refused (429) until
    /// reviewers catch up.
    pub max_open_items: usize,
    /// Resolved items of each corridor kept for listing (the newest; every item stays
    /// readable by id).
    pub keep_resolved: usize,
    /// Where items live: `embedded` (a redb file in the state directory, one server) or
    /// `redis` (shared by replicas).
    pub backend: String,
    /// The Redis of the `redis` backend (empty: `control.redis_url`, else `cache.redis_url`).
    pub redis_url: String,
    /// Prefix of the `redis` backend's keys.
    pub key_prefix: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            sla_hours: [2.0, 4.0, 4.0, 8.0, 24.0, 48.0],
            claim_ttl_ms: 30 * 60 * 1000,
            near_breach_share: 0.25,
            p4_lower_threshold_hours: 8.0,
            p2_alert_hours: 4.0,
            p0_escalation_hours: 2.0,
            max_open_items: 100_000,
            keep_resolved: 10_000,
            backend: "embedded".into(),
            redis_url: String::new(),
            key_prefix: "inv".into(),
        }
    }
}

impl Settings {
    /// Checks the numbers.
    pub fn validate(&self) -> Result<(), String> {
        for (p, h) in Priority::ALL.iter().zip(self.sla_hours) {
            if !(h.is_finite() && h > 0.0 && h <= 24.0 * 366.0) {
                return Err(format!(
                    "review.sla_hours of {} is {h}: it must be above 0 and at most 8784",
                    p.name()
                ));
            }
        }
        if !matches!(self.backend.as_str(), "embedded" | "redis") {
            return Err(format!(
                "review.backend = \"{}\" must be \"embedded\" or \"redis\"",
                self.backend
            ));
        }
        if self.max_open_items == 0 {
            return Err("review.max_open_items must be at least 1".into());
        }
        if self.claim_ttl_ms == 0 || self.claim_ttl_ms > 7 * 24 * 3_600_000 {
            return Err(format!(
                "review.claim_ttl_ms = {} must be 1 ms to 7 days",
                self.claim_ttl_ms
            ));
        }
        if !(self.near_breach_share > 0.0 && self.near_breach_share < 1.0) {
            return Err(format!(
                "review.near_breach_share = {} must be between 0 and 1",
                self.near_breach_share
            ));
        }
        for (name, h) in [
            ("p4_lower_threshold_hours", self.p4_lower_threshold_hours),
            ("p2_alert_hours", self.p2_alert_hours),
            ("p0_escalation_hours", self.p0_escalation_hours),
        ] {
            if !(h.is_finite() && h > 0.0) {
                return Err(format!("review.{name} = {h} must be above 0"));
            }
        }
        Ok(())
    }

    /// The SLA of `priority`, in ms.
    pub fn sla_ms(&self, priority: Priority) -> i64 {
        (self.sla_hours[priority.index()] * 3_600_000.0).round() as i64
    }
}

/// A reviewer's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The flagged action may go ahead.
    Approve,
    /// It may not.
    Reject,
}

/// A live or expired claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The reviewer.
    pub by: String,
    /// When it was taken.
    pub at_ms: i64,
    /// When it expires.
    pub until_ms: i64,
}

/// How an item was resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    /// The reviewer.
    pub by: String,
    /// Approve or reject.
    pub decision: Decision,
    /// Why.
    pub note: String,
    /// When.
    pub at_ms: i64,
}

/// One escalation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Escalation {
    /// Who.
    pub by: String,
    /// Priority before.
    pub from: Priority,
    /// Priority after.
    pub to: Priority,
    /// Why.
    pub reason: String,
    /// When.
    pub at_ms: i64,
}

/// One item of a corridor's queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// `<corridor>-<sequence>`, e.g. `UAE-SA-00000042`.
    pub id: String,
    /// The corridor.
    pub corridor: String,
    /// Its priority now.
    pub priority: Priority,
    /// What is to be reviewed, e.g. `listing:8812` or `account:a1`.
    pub subject: String,
    /// Why it needs a person (e.g. `RISK_ABOVE_0_8`, `HIGH_VALUE_OVER_1000`).
    pub reason_codes: Vec<String>,
    /// The request facts and model outputs the reviewer needs.
    pub facts: Value,
    /// `direct`, or the advisory that raised it.
    pub source: String,
    /// Who submitted it.
    pub submitted_by: String,
    /// When it entered the queue.
    pub created_ms: i64,
    /// When its SLA is breached (from the priority it entered with, or was escalated to).
    pub deadline_ms: i64,
    /// The current or last claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<Claim>,
    /// Its resolution, once resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<Resolution>,
    /// Every escalation, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub escalations: Vec<Escalation>,
}

/// Where an item stands at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting for a reviewer (never claimed, released, or its claim expired).
    Open,
    /// A reviewer's claim is live.
    Claimed,
    /// Decided.
    Resolved,
}

impl Item {
    /// Its status at `now_ms`.
    pub fn status(&self, now_ms: i64) -> Status {
        if self.resolution.is_some() {
            Status::Resolved
        } else if self.claim.as_ref().is_some_and(|c| c.until_ms > now_ms) {
            Status::Claimed
        } else {
            Status::Open
        }
    }

    /// The order of the queue: priority, then SLA deadline, then id.
    pub fn order_key(&self) -> (Priority, i64, &str) {
        (self.priority, self.deadline_ms, &self.id)
    }

    /// Whether its SLA is breached at `now_ms` (strictly past the deadline).
    pub fn breached(&self, now_ms: i64) -> bool {
        self.resolution.is_none() && now_ms > self.deadline_ms
    }

    /// Whether less than `share` of its SLA is left at `now_ms` (or it is breached).
    pub fn near_breach(&self, now_ms: i64, sla_ms: i64, share: f64) -> bool {
        let left = self.deadline_ms - now_ms;
        self.resolution.is_none() && (left as f64) < share * sla_ms as f64
    }
}

/// What a new item says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewItem {
    /// Its priority.
    pub priority: String,
    /// What is to be reviewed.
    pub subject: String,
    /// Why.
    #[serde(default)]
    pub reason_codes: Vec<String>,
    /// The facts (a JSON object).
    #[serde(default)]
    pub facts: Option<Value>,
    /// `direct` unless an advisory raised it.
    #[serde(default)]
    pub source: Option<String>,
}

/// Review failures, each with what a transport needs to answer.
#[derive(Debug, Error)]
pub enum ReviewError {
    /// A field is wrong (400), naming it.
    #[error("{0}")]
    Invalid(String),
    /// No such item in the corridor (404).
    #[error("{0}")]
    NotFound(String),
    /// Not allowed in the item's state (409).
    #[error("{0}")]
    Conflict(String),
    /// The corridor's queue is full (429).
    #[error("{0}")]
    Full(String),
    /// The store cannot be read or written.
    #[error("review store: {0}")]
    Store(String),
}

fn store_err(e: impl std::fmt::Display) -> ReviewError {
    ReviewError::Store(e.to_string())
}

/// Bounds on what one item may carry.
const MAX_SUBJECT: usize = 256;
const MAX_REASON_CODES: usize = 32;
const MAX_REASON_CODE: usize = 64;
const MAX_FACTS_BYTES: usize = 16 * 1024;
const MAX_NOTE: usize = 4096;

fn check_text(field: &str, text: &str, max: usize, required: bool) -> Result<(), ReviewError> {
    if required && text.trim().is_empty() {
        return Err(ReviewError::Invalid(format!("{field} is empty")));
    }
    if text.len() > max {
        return Err(ReviewError::Invalid(format!(
            "{field} is {} bytes, over the limit of {max}",
            text.len()
        )));
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(ReviewError::Invalid(format!("{field} holds control characters")));
    }
    Ok(())
}

/// The queues of every corridor: in one redb file, or in Redis.
#[derive(Debug)]
pub struct Queue {
    settings: Settings,
    store: Store,
}

/// Where the items are.
#[derive(Debug)]
enum Store {
    /// A redb file, with every unresolved item (and the newest resolved ones) in memory;
    /// changes serialised by the lock.
    Embedded(Mutex<Inner>),
    /// Redis, shared by replicas; changes by compare-and-set.
    Redis(Box<redis_queue::RedisQueue>),
}

/// How often a change is tried again on a fresher item when other replicas keep changing it.
const CHANGE_TRIES: usize = 32;

#[derive(Debug)]
struct Inner {
    db: Database,
    corridors: BTreeMap<String, Corridor>,
}

/// One corridor's items in memory: every unresolved one and the newest resolved ones.
#[derive(Debug, Default)]
struct Corridor {
    items: BTreeMap<String, Item>,
    /// Ids of the resolved items held, oldest resolution first.
    resolved: std::collections::VecDeque<String>,
}

impl Corridor {
    fn unresolved(&self) -> usize {
        self.items.len() - self.resolved.len()
    }

    /// Holds `item`, then lets go of the oldest resolved items past `keep`.
    fn hold(&mut self, item: Item, keep: usize) {
        let newly_resolved =
            item.resolution.is_some() && self.items.get(&item.id).is_none_or(|old| old.resolution.is_none());
        if newly_resolved {
            self.resolved.push_back(item.id.clone());
        }
        self.items.insert(item.id.clone(), item);
        while self.resolved.len() > keep {
            if let Some(old) = self.resolved.pop_front() {
                self.items.remove(&old);
            }
        }
    }
}

/// One corridor's queue at a glance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// The corridor.
    pub corridor: String,
    /// Open and claimed items by priority.
    pub depth: BTreeMap<Priority, usize>,
    /// Age of the oldest open or claimed item by priority, in seconds.
    pub oldest_age_seconds: BTreeMap<Priority, f64>,
    /// Items with less than the near-breach share of their SLA left (breached included).
    pub near_breach: BTreeMap<Priority, usize>,
    /// Items past their SLA.
    pub breached: BTreeMap<Priority, usize>,
    /// Items under a live claim.
    pub claimed: usize,
    /// Reviewers holding a live claim.
    pub active_reviewers: usize,
    /// The overflow rules that fire now.
    pub signals: Vec<Signal>,
}

/// An overflow rule that fires.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Signal {
    /// `lower_auto_clear_threshold`, `throttle`, `escalate`.
    pub kind: &'static str,
    /// The priority it watches.
    pub priority: Priority,
    /// Age of that priority's oldest item, in hours.
    pub oldest_hours: f64,
    /// The rule's limit, in hours.
    pub limit_hours: f64,
    /// What an operator should do.
    pub suggestion: String,
}

impl Queue {
    /// Opens the queue of `settings.backend`: the redb file at `path` (created when missing),
    /// or Redis at `settings.redis_url`.
    pub fn open(path: &Path, settings: Settings) -> Result<Self, ReviewError> {
        settings.validate().map_err(ReviewError::Invalid)?;
        if settings.backend == "redis" {
            if settings.redis_url.is_empty() {
                return Err(ReviewError::Invalid(
                    "review.backend = \"redis\" needs review.redis_url (or control.redis_url, cache.redis_url)".into(),
                ));
            }
            let redis = redis_queue::RedisQueue::open(&settings.redis_url, &settings.key_prefix)?;
            return Ok(Self {
                settings,
                store: Store::Redis(Box::new(redis)),
            });
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(store_err)?;
        }
        let db = Database::create(path).map_err(|e| ReviewError::Store(format!("{}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(store_err)?;
        txn.open_table(ITEMS).map_err(store_err)?;
        txn.open_table(SEQUENCES).map_err(store_err)?;
        txn.commit().map_err(store_err)?;
        let mut all = Vec::new();
        {
            let read = db.begin_read().map_err(store_err)?;
            let table = read.open_table(ITEMS).map_err(store_err)?;
            for row in table.iter().map_err(store_err)? {
                let (id, bytes) = row.map_err(store_err)?;
                let item: Item = serde_json::from_slice(bytes.value())
                    .map_err(|e| ReviewError::Store(format!("item {}: {e}", id.value())))?;
                all.push(item);
            }
        }
        // Resolved items in the order they were resolved, so the newest are the ones kept.
        all.sort_by_key(|i| (i.resolution.as_ref().map(|r| r.at_ms), i.id.clone()));
        let mut corridors: BTreeMap<String, Corridor> = BTreeMap::new();
        for item in all {
            corridors
                .entry(item.corridor.clone())
                .or_default()
                .hold(item, settings.keep_resolved);
        }
        Ok(Self {
            settings,
            store: Store::Embedded(Mutex::new(Inner { db, corridors })),
        })
    }

    /// `embedded` or `redis`, and where.
    pub fn place(&self) -> String {
        match &self.store {
            Store::Embedded(_) => "embedded".into(),
            Store::Redis(r) => format!("redis ({})", r.durability()),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Runs `f` over `corridor`'s unresolved items (and, with `resolved`, the newest resolved
    /// ones), in no particular order.
    fn with_items<T>(
        &self,
        corridor: &str,
        resolved: bool,
        f: impl FnOnce(&mut dyn Iterator<Item = &Item>) -> T,
    ) -> Result<T, ReviewError> {
        match &self.store {
            Store::Embedded(m) => {
                let inner = m.lock().unwrap_or_else(|p| p.into_inner());
                let mut items = inner
                    .corridors
                    .get(corridor)
                    .into_iter()
                    .flat_map(|c| c.items.values())
                    .filter(|i| resolved || i.resolution.is_none());
                Ok(f(&mut items))
            }
            Store::Redis(r) => {
                let items = r.items(corridor, resolved)?;
                Ok(f(&mut items.iter()))
            }
        }
    }

    /// Stores `item` (and, for a new one, its corridor's next sequence number) durably.
    fn commit(&self, inner: &mut Inner, item: Item, sequence: Option<u64>) -> Result<Item, ReviewError> {
        let bytes = serde_json::to_vec(&item).map_err(store_err)?;
        let txn = inner.db.begin_write().map_err(store_err)?;
        {
            let mut table = txn.open_table(ITEMS).map_err(store_err)?;
            table.insert(item.id.as_str(), bytes.as_slice()).map_err(store_err)?;
            if let Some(next) = sequence {
                let mut seqs = txn.open_table(SEQUENCES).map_err(store_err)?;
                seqs.insert(item.corridor.as_str(), next).map_err(store_err)?;
            }
        }
        txn.commit().map_err(store_err)?;
        inner
            .corridors
            .entry(item.corridor.clone())
            .or_default()
            .hold(item.clone(), self.settings.keep_resolved);
        Ok(item)
    }

    /// Adds an item to `corridor`'s queue, submitted by `actor`.
    pub fn submit(&self, corridor: &str, new: &NewItem, actor: &str, now_ms: i64) -> Result<Item, ReviewError> {
        let priority = Priority::parse(&new.priority).map_err(|e| ReviewError::Invalid(format!("priority: {e}")))?;
        check_text("subject", &new.subject, MAX_SUBJECT, true)?;
        if new.reason_codes.len() > MAX_REASON_CODES {
            return Err(ReviewError::Invalid(format!(
                "reason_codes has {} entries, over the limit of {MAX_REASON_CODES}",
                new.reason_codes.len()
            )));
        }
        for (i, code) in new.reason_codes.iter().enumerate() {
            let ok = !code.is_empty()
                && code.len() <= MAX_REASON_CODE
                && code
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
            if !ok {
                return Err(ReviewError::Invalid(format!(
                    "reason_codes[{i}] '{code}' must be 1 to {MAX_REASON_CODE} of A-Z, 0-9 and _"
                )));
            }
        }
        let facts = new.facts.clone().unwrap_or_else(|| Value::Object(Default::default()));
        if !facts.is_object() {
            return Err(ReviewError::Invalid("facts must be a JSON object".into()));
        }
        let size = serde_json::to_vec(&facts).map_err(store_err)?.len();
        if size > MAX_FACTS_BYTES {
            return Err(ReviewError::Invalid(format!(
                "facts is {size} bytes, over the limit of {MAX_FACTS_BYTES}"
            )));
        }
        let source = new.source.clone().unwrap_or_else(|| "direct".into());
        check_text("source", &source, MAX_SUBJECT, true)?;
        let item = Item {
            id: String::new(),
            corridor: corridor.to_string(),
            priority,
            subject: new.subject.clone(),
            reason_codes: new.reason_codes.clone(),
            facts,
            source,
            submitted_by: actor.to_string(),
            created_ms: now_ms,
            deadline_ms: now_ms + self.settings.sla_ms(priority),
            claim: None,
            resolution: None,
            escalations: Vec::new(),
        };
        let max = self.settings.max_open_items;
        let full = |open: usize| {
            ReviewError::Full(format!(
                "the review queue of {corridor} holds {open} unresolved items, its limit (review.max_open_items): \
                 resolve some first"
            ))
        };
        match &self.store {
            Store::Redis(r) => r.submit(corridor, item, max)?.map_err(full),
            Store::Embedded(m) => {
                let mut inner = m.lock().unwrap_or_else(|p| p.into_inner());
                let open = inner.corridors.get(corridor).map_or(0, Corridor::unresolved);
                if open >= max {
                    return Err(full(open));
                }
                let next = {
                    let read = inner.db.begin_read().map_err(store_err)?;
                    let seqs = read.open_table(SEQUENCES).map_err(store_err)?;
                    let current = seqs.get(corridor).map_err(store_err)?.map_or(0, |v| v.value());
                    current + 1
                };
                let item = Item {
                    id: format!("{corridor}-{next:08}"),
                    ..item
                };
                self.commit(&mut inner, item, Some(next))
            }
        }
    }

    /// The items of `corridor` with one of `statuses` at `now_ms`, in queue order.
    pub fn list(
        &self,
        corridor: &str,
        statuses: &[Status],
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<Item>, ReviewError> {
        self.with_items(corridor, statuses.contains(&Status::Resolved), |all| {
            let mut items: Vec<&Item> = all.filter(|i| statuses.contains(&i.status(now_ms))).collect();
            items.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
            items.into_iter().take(limit).cloned().collect()
        })
    }

    /// One item of `corridor` (a resolved one no longer held in memory is read from the store).
    pub fn get(&self, corridor: &str, id: &str) -> Result<Item, ReviewError> {
        match &self.store {
            Store::Embedded(m) => Self::find(&m.lock().unwrap_or_else(|p| p.into_inner()), corridor, id),
            Store::Redis(r) => r
                .get(id)?
                .map(|(item, _)| item)
                .filter(|item| item.corridor == corridor)
                .ok_or_else(|| ReviewError::NotFound(format!("no review item '{id}' in corridor {corridor}"))),
        }
    }

    fn find(inner: &Inner, corridor: &str, id: &str) -> Result<Item, ReviewError> {
        let missing = || ReviewError::NotFound(format!("no review item '{id}' in corridor {corridor}"));
        if let Some(item) = inner.corridors.get(corridor).and_then(|c| c.items.get(id)) {
            return Ok(item.clone());
        }
        let read = inner.db.begin_read().map_err(store_err)?;
        let table = read.open_table(ITEMS).map_err(store_err)?;
        let Some(bytes) = table.get(id).map_err(store_err)? else {
            return Err(missing());
        };
        let item: Item = serde_json::from_slice(bytes.value()).map_err(store_err)?;
        if item.corridor == corridor {
            Ok(item)
        } else {
            Err(missing())
        }
    }

    /// Changes one item: `change` sees it and its status at `now_ms`. Embedded: under the
    /// lock. Redis: by compare-and-set, run again on the fresh item when another replica
    /// changed it meanwhile.
    fn change(
        &self,
        corridor: &str,
        id: &str,
        now_ms: i64,
        change: impl Fn(&mut Item, Status) -> Result<(), ReviewError>,
    ) -> Result<Item, ReviewError> {
        let missing = || ReviewError::NotFound(format!("no review item '{id}' in corridor {corridor}"));
        match &self.store {
            Store::Embedded(m) => {
                let mut inner = m.lock().unwrap_or_else(|p| p.into_inner());
                let mut item = Self::find(&inner, corridor, id)?;
                let status = item.status(now_ms);
                change(&mut item, status)?;
                self.commit(&mut inner, item, None)
            }
            Store::Redis(r) => {
                for _ in 0..CHANGE_TRIES {
                    let (mut item, rev) = r.get(id)?.filter(|(i, _)| i.corridor == corridor).ok_or_else(missing)?;
                    let status = item.status(now_ms);
                    change(&mut item, status)?;
                    if r.replace(&item, rev, self.settings.keep_resolved)? {
                        return Ok(item);
                    }
                }
                Err(ReviewError::Conflict(format!(
                    "{id} kept changing under this change ({CHANGE_TRIES} tries): try again"
                )))
            }
        }
    }

    /// `reviewer` claims the item until `now_ms + claim_ttl_ms`. Refused when it is resolved,
    /// or under another reviewer's live claim (a reviewer renewing their own claim extends it).
    pub fn claim(&self, corridor: &str, id: &str, reviewer: &str, now_ms: i64) -> Result<Item, ReviewError> {
        let ttl = self.settings.claim_ttl_ms as i64;
        self.change(corridor, id, now_ms, |item, status| {
            match (status, item.claim.as_ref()) {
                (Status::Resolved, _) => return Err(ReviewError::Conflict(format!("{id} is already resolved"))),
                (Status::Claimed, Some(c)) if c.by != reviewer => {
                    return Err(ReviewError::Conflict(format!(
                        "{id} is claimed by {} until {}",
                        c.by,
                        rfc3339_ms(c.until_ms)
                    )))
                }
                _ => {}
            }
            item.claim = Some(Claim {
                by: reviewer.to_string(),
                at_ms: now_ms,
                until_ms: now_ms + ttl,
            });
            Ok(())
        })
    }

    fn require_claim(item: &Item, status: Status, reviewer: &str, action: &str) -> Result<(), ReviewError> {
        match (status, item.claim.as_ref()) {
            (Status::Resolved, _) => Err(ReviewError::Conflict(format!("{} is already resolved", item.id))),
            (Status::Claimed, Some(c)) if c.by == reviewer => Ok(()),
            (Status::Claimed, Some(c)) => Err(ReviewError::Conflict(format!(
                "cannot {action} {}: it is claimed by {}",
                item.id, c.by
            ))),
            _ => Err(ReviewError::Conflict(format!(
                "cannot {action} {}: claim it first (an expired claim no longer counts)",
                item.id
            ))),
        }
    }

    /// `reviewer`, holding the live claim, resolves the item.
    pub fn resolve(
        &self,
        corridor: &str,
        id: &str,
        reviewer: &str,
        decision: Decision,
        note: &str,
        now_ms: i64,
    ) -> Result<Item, ReviewError> {
        check_text("note", note, MAX_NOTE, false)?;
        self.change(corridor, id, now_ms, |item, status| {
            Self::require_claim(item, status, reviewer, "resolve")?;
            item.resolution = Some(Resolution {
                by: reviewer.to_string(),
                decision,
                note: note.to_string(),
                at_ms: now_ms,
            });
            Ok(())
        })
    }

    /// `reviewer` gives their live claim up; the item is open again.
    pub fn release(&self, corridor: &str, id: &str, reviewer: &str, now_ms: i64) -> Result<Item, ReviewError> {
        self.change(corridor, id, now_ms, |item, status| {
            Self::require_claim(item, status, reviewer, "release")?;
            if let Some(c) = item.claim.as_mut() {
                c.until_ms = now_ms;
            }
            Ok(())
        })
    }

    /// Raises the priority (to `to`, else one level) of an unresolved item; its deadline
    /// becomes the new priority's SLA from its creation if that is sooner. Any reviewer of the
    /// corridor may escalate; a claim stays as it is.
    pub fn escalate(
        &self,
        corridor: &str,
        id: &str,
        actor: &str,
        to: Option<Priority>,
        reason: &str,
        now_ms: i64,
    ) -> Result<Item, ReviewError> {
        check_text("reason", reason, MAX_NOTE, true)?;
        let settings = &self.settings;
        self.change(corridor, id, now_ms, |item, status| {
            if status == Status::Resolved {
                return Err(ReviewError::Conflict(format!("{id} is already resolved")));
            }
            let to = to.unwrap_or_else(|| item.priority.raised());
            if to >= item.priority {
                return Err(ReviewError::Invalid(format!(
                    "to: {} is not more urgent than {}",
                    to.name(),
                    item.priority.name()
                )));
            }
            item.escalations.push(Escalation {
                by: actor.to_string(),
                from: item.priority,
                to,
                reason: reason.to_string(),
                at_ms: now_ms,
            });
            item.priority = to;
            item.deadline_ms = item.deadline_ms.min(item.created_ms + settings.sla_ms(to));
            Ok(())
        })
    }

    /// `corridor`'s queue at `now_ms`: depth, oldest age, near-breach and breached items by
    /// priority, claims, reviewers, and the overflow signals that fire.
    pub fn summary(&self, corridor: &str, now_ms: i64) -> Result<Summary, ReviewError> {
        let s = &self.settings;
        let mut summary = Summary {
            corridor: corridor.to_string(),
            depth: BTreeMap::new(),
            oldest_age_seconds: BTreeMap::new(),
            near_breach: BTreeMap::new(),
            breached: BTreeMap::new(),
            claimed: 0,
            active_reviewers: 0,
            signals: Vec::new(),
        };
        for p in Priority::ALL {
            summary.depth.insert(p, 0);
            summary.near_breach.insert(p, 0);
            summary.breached.insert(p, 0);
        }
        let mut reviewers = std::collections::BTreeSet::new();
        self.with_items(corridor, false, |items| {
            for item in items {
                summary_add(&mut summary, &mut reviewers, s, item, now_ms);
            }
        })?;
        summary.active_reviewers = reviewers.len();
        Self::signals(&mut summary, s);
        Ok(summary)
    }

    /// The overflow rules that fire for `summary`.
    fn signals(summary: &mut Summary, s: &Settings) {
        let rules = [
            (
                Priority::P4,
                s.p4_lower_threshold_hours,
                "lower_auto_clear_threshold",
                "standard items wait too long: lower this corridor's auto-clear threshold \
                 (an audited operator action; not done automatically)",
            ),
            (
                Priority::P2,
                s.p2_alert_hours,
                "throttle",
                "high-risk flags wait too long: alert, and consider throttling the corridor's intake",
            ),
            (
                Priority::P0,
                s.p0_escalation_hours,
                "escalate",
                "escrow disputes are past their window: escalate to the corridor's on-call lead",
            ),
        ];
        for (p, limit, kind, suggestion) in rules {
            let oldest_hours = summary.oldest_age_seconds.get(&p).copied().unwrap_or(0.0) / 3600.0;
            if oldest_hours > limit {
                summary.signals.push(Signal {
                    kind,
                    priority: p,
                    oldest_hours,
                    limit_hours: limit,
                    suggestion: suggestion.to_string(),
                });
            }
        }
    }
}

/// Counts one item into `summary` (resolved items do not count).
fn summary_add(
    summary: &mut Summary,
    reviewers: &mut std::collections::BTreeSet<String>,
    s: &Settings,
    item: &Item,
    now_ms: i64,
) {
    let status = item.status(now_ms);
    if status == Status::Resolved {
        return;
    }
    let p = item.priority;
    *summary.depth.entry(p).or_default() += 1;
    let age = (now_ms - item.created_ms).max(0) as f64 / 1000.0;
    let oldest = summary.oldest_age_seconds.entry(p).or_insert(0.0);
    *oldest = oldest.max(age);
    if item.near_breach(now_ms, s.sla_ms(p), s.near_breach_share) {
        *summary.near_breach.entry(p).or_default() += 1;
    }
    if item.breached(now_ms) {
        *summary.breached.entry(p).or_default() += 1;
    }
    if status == Status::Claimed {
        summary.claimed += 1;
        if let Some(c) = &item.claim {
            reviewers.insert(c.by.clone());
        }
    }
}

/// `ms` (Unix milliseconds) as RFC 3339, to the second.
pub fn rfc3339_ms(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;

    fn queue(dir: &Path) -> Queue {
        Queue::open(&dir.join("review.redb"), Settings::default()).unwrap()
    }

    fn new(priority: &str, subject: &str) -> NewItem {
        NewItem {
            priority: priority.into(),
            subject: subject.into(),
            reason_codes: vec!["RISK_ABOVE_0_8".into()],
            facts: Some(serde_json::json!({"amount": 1200})),
            source: None,
        }
    }

    /// The ids UAE-SA lists with `status` at `now`.
    fn listed(q: &Queue, status: Status, now: i64, limit: usize) -> Vec<String> {
        q.list("UAE-SA", &[status], now, limit)
            .unwrap()
            .into_iter()
            .map(|i| i.id)
            .collect()
    }

    #[test]
    fn order_is_priority_then_deadline_then_id_and_deadlines_follow_the_slas() {
        let dir = tempfile::tempdir().unwrap();
        let q = queue(dir.path());
        let p4 = q.submit("UAE-SA", &new("P4", "a"), "t", 0).unwrap();
        let p1 = q.submit("UAE-SA", &new("p1", "b"), "t", 10).unwrap();
        let p2 = q.submit("UAE-SA", &new("P2", "c"), "t", 5).unwrap();
        let p1_later = q.submit("UAE-SA", &new("P1", "d"), "t", 10).unwrap();
        q.submit("US-EG", &new("P0", "other corridor"), "t", 0).unwrap();
        assert_eq!(p4.deadline_ms, 24 * H);
        assert_eq!(p1.deadline_ms, 10 + 4 * H);
        assert_eq!(p2.deadline_ms, 5 + 4 * H);
        // P1 and P2 have the same SLA: priority still comes first; equal deadlines by id.
        let ids: Vec<String> = listed(&q, Status::Open, 20, 100);
        assert_eq!(ids, [p1.id.clone(), p1_later.id.clone(), p2.id, p4.id]);
        assert_eq!(p1.id, "UAE-SA-00000002");
    }

    #[test]
    fn breach_and_near_breach_at_the_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let q = queue(dir.path());
        let item = q.submit("UAE-SA", &new("P0", "dispute"), "t", 0).unwrap();
        let sla = 2 * H;
        assert!(!item.breached(sla), "at the deadline it is not yet breached");
        assert!(item.breached(sla + 1));
        // Near breach: strictly less than 25% of the SLA left.
        assert!(!item.near_breach(sla - sla / 4, sla, 0.25));
        assert!(item.near_breach(sla - sla / 4 + 1, sla, 0.25));
        let at = |now| q.summary("UAE-SA", now).unwrap();
        assert_eq!(at(sla).breached[&Priority::P0], 0);
        assert_eq!(at(sla + 1).breached[&Priority::P0], 1);
        // The P0 escalation signal fires strictly above 2 h.
        assert!(at(2 * H).signals.is_empty());
        let s = at(2 * H + 1);
        assert_eq!(s.signals.len(), 1);
        assert_eq!((s.signals[0].kind, s.signals[0].priority), ("escalate", Priority::P0));
    }

    #[test]
    fn overflow_signals_follow_the_design() {
        let dir = tempfile::tempdir().unwrap();
        let q = queue(dir.path());
        q.submit("UK-NG", &new("P4", "standard"), "t", 0).unwrap();
        q.submit("UK-NG", &new("P2", "risky"), "t", 0).unwrap();
        let kinds = |now| -> Vec<&'static str> {
            q.summary("UK-NG", now)
                .unwrap()
                .signals
                .iter()
                .map(|s| s.kind)
                .collect()
        };
        assert!(kinds(4 * H).is_empty());
        assert_eq!(kinds(4 * H + 1), ["throttle"]);
        assert_eq!(kinds(8 * H + 1), ["lower_auto_clear_threshold", "throttle"]);
    }

    #[test]
    fn one_claim_at_a_time_claims_expire_and_only_the_claimant_resolves() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(
            &dir.path().join("r.redb"),
            Settings {
                claim_ttl_ms: 1000,
                ..Settings::default()
            },
        )
        .unwrap();
        let id = q.submit("UAE-SA", &new("P3", "kyc"), "t", 0).unwrap().id;
        q.claim("UAE-SA", &id, "ana", 100).unwrap();
        let err = q.claim("UAE-SA", &id, "ben", 500).unwrap_err();
        assert!(
            matches!(err, ReviewError::Conflict(ref m) if m.contains("claimed by ana")),
            "{err}"
        );
        // At 1100 ana's claim has expired: ben may claim, ana may no longer resolve.
        q.claim("UAE-SA", &id, "ben", 1100).unwrap();
        let err = q
            .resolve("UAE-SA", &id, "ana", Decision::Approve, "", 1200)
            .unwrap_err();
        assert!(matches!(err, ReviewError::Conflict(_)), "{err}");
        let done = q
            .resolve("UAE-SA", &id, "ben", Decision::Reject, "documents forged", 1200)
            .unwrap();
        assert_eq!(done.status(1200), Status::Resolved);
        assert!(matches!(
            q.claim("UAE-SA", &id, "cy", 1300),
            Err(ReviewError::Conflict(_))
        ));
        assert!(matches!(q.get("US-EG", &id), Err(ReviewError::NotFound(_))));
    }

    #[test]
    fn concurrent_claims_give_the_item_to_one_reviewer() {
        let dir = tempfile::tempdir().unwrap();
        let q = std::sync::Arc::new(queue(dir.path()));
        let id = q.submit("UAE-SA", &new("P1", "big order"), "t", 0).unwrap().id;
        let winners: usize = (0..8)
            .map(|r| {
                let (q, id) = (q.clone(), id.clone());
                std::thread::spawn(move || q.claim("UAE-SA", &id, &format!("r{r}"), 10).is_ok())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| usize::from(t.join().unwrap()))
            .sum();
        assert_eq!(winners, 1);
    }

    #[test]
    fn a_full_queue_refuses_intake_and_resolved_items_leave_memory_not_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings {
            max_open_items: 2,
            keep_resolved: 1,
            ..Settings::default()
        };
        let q = Queue::open(&dir.path().join("r.redb"), settings.clone()).unwrap();
        let a = q.submit("UAE-SA", &new("P4", "a"), "t", 0).unwrap().id;
        let b = q.submit("UAE-SA", &new("P4", "b"), "t", 0).unwrap().id;
        let err = q.submit("UAE-SA", &new("P4", "c"), "t", 0).unwrap_err();
        assert!(
            matches!(err, ReviewError::Full(ref m) if m.contains("max_open_items")),
            "{err}"
        );
        // Other corridors are not affected.
        q.submit("US-EG", &new("P4", "d"), "t", 0).unwrap();
        for (id, at) in [(&a, 10), (&b, 20)] {
            q.claim("UAE-SA", id, "ana", at).unwrap();
            q.resolve("UAE-SA", id, "ana", Decision::Approve, "", at + 1).unwrap();
        }
        q.submit("UAE-SA", &new("P4", "e"), "t", 30).unwrap();
        // Only the newest resolved item is listed; the older one is still there to read.
        let resolved: Vec<String> = listed(&q, Status::Resolved, 40, 10);
        assert_eq!(resolved, vec![b.clone()]);
        assert_eq!(q.get("UAE-SA", &a).unwrap().status(40), Status::Resolved);
        drop(q);
        let q = Queue::open(&dir.path().join("r.redb"), settings).unwrap();
        let resolved: Vec<String> = listed(&q, Status::Resolved, 40, 10);
        assert_eq!(resolved, [b]);
        assert_eq!(q.get("UAE-SA", &a).unwrap().resolution.unwrap().at_ms, 11);
    }

    #[test]
    fn escalation_raises_priority_and_pulls_the_deadline_in() {
        let dir = tempfile::tempdir().unwrap();
        let q = queue(dir.path());
        let id = q.submit("UAE-SA", &new("P4", "odd"), "t", 0).unwrap().id;
        let up = q
            .escalate("UAE-SA", &id, "ana", None, "looks like fraud", 60_000)
            .unwrap();
        assert_eq!((up.priority, up.deadline_ms), (Priority::P3, 8 * H));
        let top = q
            .escalate("UAE-SA", &id, "ana", Some(Priority::P0), "confirmed", 70_000)
            .unwrap();
        assert_eq!(
            (top.priority, top.deadline_ms, top.escalations.len()),
            (Priority::P0, 2 * H, 2)
        );
        let err = q
            .escalate("UAE-SA", &id, "ana", Some(Priority::P2), "down?", 80_000)
            .unwrap_err();
        assert!(err.to_string().contains("not more urgent"), "{err}");
    }

    #[test]
    fn items_survive_reopening_and_bad_input_names_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let q = queue(dir.path());
            let id = q.submit("UAE-SA", &new("P2", "x"), "t", 0).unwrap().id;
            q.claim("UAE-SA", &id, "ana", 5).unwrap();
            id
        };
        let q = queue(dir.path());
        let item = q.get("UAE-SA", &id).unwrap();
        assert_eq!(item.claim.as_ref().unwrap().by, "ana");
        // Sequence numbers continue after reopening.
        assert_eq!(
            q.submit("UAE-SA", &new("P5", "y"), "t", 9).unwrap().id,
            "UAE-SA-00000002"
        );
        for (bad, field) in [
            (new("P9", "x"), "priority"),
            (new("P1", " "), "subject"),
            (
                NewItem {
                    reason_codes: vec!["lower".into()],
                    ..new("P1", "x")
                },
                "reason_codes[0]",
            ),
            (
                NewItem {
                    facts: Some(serde_json::json!([1])),
                    ..new("P1", "x")
                },
                "facts",
            ),
        ] {
            let err = q.submit("UAE-SA", &bad, "t", 0).unwrap_err();
            assert!(
                matches!(err, ReviewError::Invalid(ref m) if m.starts_with(field)),
                "{field}: {err}"
            );
        }
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_ms(1_764_547_200_000), "2025-12-01T00:00:00Z");
    }
}
