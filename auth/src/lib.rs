//! API keys of Invariant: who may call the server, in which corridors, with which roles.
//!
//! A key is bound to corridors (or `*`, every corridor) and to [`Role`]s. Its secret is shown
//! once, when it is created; the key file ([`KeyStore`], `keys.json` in the state directory by
//! default) keeps only an HMAC-SHA-256 of the whole key under a pepper (a secret kept apart
//! from the file: `INVARIANT_KEY_PEPPER`, or a `0600` file), so a copy of the key file alone
//! lets no one call the server. The keys are a document of the shared control state (a file,
//! or Redis for replicas), changed by compare-and-set, so the CLI and every replica never lose
//! one another's change; a server learns of changes by notification and polling, so a revoked
//! key is refused everywhere within the poll period. [`Keyring`] is the verifying side: it turns a presented key into a [`Principal`].
//!
//! Keys look like `inv_<id>_<secret>`: 16 hexadecimal digits of public id (what audit records
//! and `invariant keys list` name) and 64 of secret (256 random bits).

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

/// The prefix of every key.
pub const KEY_PREFIX: &str = "inv_";

/// Hex digits of a key's public id.
const ID_HEX: usize = 16;

/// Hex digits of a key's secret.
const SECRET_HEX: usize = 64;

/// The environment variable that carries the pepper (it wins over the pepper file).
pub const PEPPER_ENV: &str = "INVARIANT_KEY_PEPPER";

/// Fewest bytes of pepper accepted.
const MIN_PEPPER: usize = 16;

/// Why a key or the key file cannot be used.
#[derive(Debug, Error)]
pub enum AuthError {
    /// No key was presented.
    #[error("missing API key: send 'Authorization: Bearer <key>'")]
    Missing,
    /// The credential is not a key of this server's form.
    #[error("malformed API key: expected 'Authorization: Bearer inv_<id>_<secret>'")]
    Malformed,
    /// No such key (or a wrong secret: the two are not told apart).
    #[error("unknown API key")]
    Unknown,
    /// The key was revoked.
    #[error("API key {0} was revoked")]
    Revoked(String),
    /// A role name that does not exist.
    #[error("unknown role '{0}' (roles: infer, features:read, features:write, admin, reviewer, metrics)")]
    UnknownRole(String),
    /// A corridor that is not a corridor id.
    #[error("corridor '{0}': {1}")]
    BadCorridor(String, String),
    /// A key request that makes no sense (no roles, no corridors, an empty name).
    #[error("{0}")]
    Invalid(String),
    /// No key with this id in the file.
    #[error("no API key with id '{0}'")]
    NoSuchKey(String),
    /// The pepper is missing or too short.
    #[error("key pepper: {0}")]
    Pepper(String),
    /// The keys cannot be read or written.
    #[error(transparent)]
    Store(#[from] invariant_control::ControlError),
    /// A key file (the pepper) cannot be read or written.
    #[error("key file {path}: {message}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Inference (and the model metadata it needs) in the key's corridors.
    #[serde(rename = "infer")]
    Infer,
    /// Reading online features in the key's corridors.
    #[serde(rename = "features:read")]
    FeaturesRead,
    /// Pushing and materializing features in the key's corridors.
    #[serde(rename = "features:write")]
    FeaturesWrite,
    /// The admin API: lifecycle transitions, loads and unloads, governance, in the key's
    /// corridors (changes that reach every corridor need a `*` key).
    #[serde(rename = "admin")]
    Admin,
    /// The human review queue of the key's corridors.
    #[serde(rename = "reviewer")]
    Reviewer,
    /// Scraping `/metrics` (which spans every corridor: needs a `*` key).
    #[serde(rename = "metrics")]
    Metrics,
}

impl Role {
    /// Every role, in a fixed order.
    pub const ALL: [Role; 6] = [
        Role::Infer,
        Role::FeaturesRead,
        Role::FeaturesWrite,
        Role::Admin,
        Role::Reviewer,
        Role::Metrics,
    ];

    /// The role's name, e.g. `features:read`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Infer => "infer",
            Role::FeaturesRead => "features:read",
            Role::FeaturesWrite => "features:write",
            Role::Admin => "admin",
            Role::Reviewer => "reviewer",
            Role::Metrics => "metrics",
        }
    }

    /// The role named `name`.
    pub fn parse(name: &str) -> Result<Role, AuthError> {
        let name = name.trim();
        Role::ALL
            .into_iter()
            .find(|r| r.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| AuthError::UnknownRole(name.to_string()))
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The corridors a key may act in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Corridors {
    /// Every corridor (`*`).
    All,
    /// These corridor ids (normalised, sorted).
    Only(BTreeSet<String>),
}

impl Corridors {
    /// Parses a list such as `["UAE-SA", "US-EG"]` or `["*"]`; ids are normalised
    /// (upper case) and must be corridor ids (whether they are declared is the server's
    /// business: a key may name a corridor that is added later).
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Corridors, AuthError> {
        if names.iter().any(|n| n.as_ref().trim() == "*") {
            return Ok(Corridors::All);
        }
        let mut set = BTreeSet::new();
        for name in names {
            let id = invariant_core::CorridorId::parse(name.as_ref())
                .map_err(|e| AuthError::BadCorridor(name.as_ref().to_string(), e.to_string()))?;
            set.insert(id.as_str().to_string());
        }
        if set.is_empty() {
            return Err(AuthError::Invalid("a key needs at least one corridor (or '*')".into()));
        }
        Ok(Corridors::Only(set))
    }

    /// Whether `corridor` (as declared: upper case) is one of them.
    pub fn contains(&self, corridor: &str) -> bool {
        match self {
            Corridors::All => true,
            Corridors::Only(set) => set.contains(corridor),
        }
    }

    /// The list as stored: `["*"]` or the sorted ids.
    pub fn names(&self) -> Vec<String> {
        match self {
            Corridors::All => vec!["*".into()],
            Corridors::Only(set) => set.iter().cloned().collect(),
        }
    }
}

/// The authenticated caller of a request: a key's id, name, roles and corridors (cheap to
/// clone: one reference count).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal(Arc<PrincipalInner>);

#[derive(Debug, PartialEq, Eq)]
struct PrincipalInner {
    id: String,
    name: String,
    roles: u8,
    corridors: Corridors,
}

impl Principal {
    fn new(id: &str, name: &str, roles: u8, corridors: Corridors) -> Self {
        Self(Arc::new(PrincipalInner {
            id: id.to_string(),
            name: name.to_string(),
            roles,
            corridors,
        }))
    }

    /// The caller of a server started with authentication switched off for development:
    /// every role, every corridor, id `dev-no-auth`.
    pub fn development() -> Self {
        static DEV: std::sync::OnceLock<Principal> = std::sync::OnceLock::new();
        DEV.get_or_init(|| {
            Principal::new(
                "dev-no-auth",
                "authentication disabled (--dev-no-auth)",
                Role::ALL.iter().fold(0, |bits, r| bits | r.bit()),
                Corridors::All,
            )
        })
        .clone()
    }

    /// The key's public id (what audit records name as the actor).
    pub fn id(&self) -> &str {
        &self.0.id
    }

    /// The key's name, as given when it was created.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Whether the key has `role`.
    pub fn has(&self, role: Role) -> bool {
        self.0.roles & role.bit() != 0
    }

    /// Whether the key has `role` in `corridor`.
    pub fn may(&self, role: Role, corridor: &str) -> bool {
        self.has(role) && self.0.corridors.contains(corridor)
    }

    /// Whether the key has `role` in every corridor (a `*` key).
    pub fn may_everywhere(&self, role: Role) -> bool {
        self.has(role) && matches!(self.0.corridors, Corridors::All)
    }

    /// The key's corridors.
    pub fn corridors(&self) -> &Corridors {
        &self.0.corridors
    }
}

/// One key as the key file keeps it (no secret: its HMAC only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    /// Public id (16 hex digits).
    pub id: String,
    /// What the key is for, e.g. `checkout-service`.
    pub name: String,
    /// Its roles.
    pub roles: BTreeSet<Role>,
    /// `["*"]` or the corridor ids it may act in, sorted.
    pub corridors: Vec<String>,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// Who created it.
    pub created_by: String,
    /// When it was revoked, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    /// Who revoked it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_by: Option<String>,
    /// HMAC-SHA-256 of the whole key under the pepper, hex.
    pub mac: String,
}

/// The key file: every key ever created, by id, and a revision bumped by each change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    /// Bumped by every change.
    pub revision: u64,
    /// Keys by id.
    pub keys: BTreeMap<String, KeyRecord>,
}

/// The secret under which key digests are made. Never logged: its `Debug` hides it.
#[derive(Clone)]
pub struct Pepper(Vec<u8>);

impl fmt::Debug for Pepper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pepper(..)")
    }
}

impl Pepper {
    /// A pepper of these bytes (at least 16).
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, AuthError> {
        let bytes = bytes.into();
        if bytes.len() < MIN_PEPPER {
            return Err(AuthError::Pepper(format!(
                "must be at least {MIN_PEPPER} bytes, got {}",
                bytes.len()
            )));
        }
        Ok(Self(bytes))
    }

    /// The pepper in force: `INVARIANT_KEY_PEPPER` when set, else the content of `file`
    /// (trailing whitespace removed). When neither exists and `create` is set, a random pepper
    /// is written to `file` (mode `0600`) and used; otherwise `Ok(None)`.
    pub fn load(file: &Path, create: bool) -> Result<Option<Self>, AuthError> {
        if let Some(value) = std::env::var_os(PEPPER_ENV) {
            let value = value
                .into_string()
                .map_err(|_| AuthError::Pepper(format!("{PEPPER_ENV} is not UTF-8")))?;
            return Self::new(value.trim_end().as_bytes().to_vec())
                .map(Some)
                .map_err(|e| AuthError::Pepper(format!("{PEPPER_ENV}: {e}")));
        }
        let io = |e: std::io::Error| AuthError::Pepper(format!("{}: {e}", file.display()));
        match std::fs::read(file) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                Self::new(text.trim_end().as_bytes().to_vec())
                    .map(Some)
                    .map_err(|e| AuthError::Pepper(format!("{}: {e}", file.display())))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let mut raw = [0u8; 32];
                getrandom::fill(&mut raw).map_err(|e| AuthError::Pepper(format!("no randomness: {e}")))?;
                let text = hex::encode(raw);
                write_private(file, text.as_bytes()).map_err(io)?;
                Self::new(text.into_bytes()).map(Some)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(e)),
        }
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC accepts keys of any length.
        <Hmac<Sha256> as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
    }
}

/// Creates `path` with `bytes`, readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// The id part of a presented key, when it has this server's form.
fn split_key(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id, ID_HEX) && hex(secret, SECRET_HEX)).then_some(id)
}

/// A key just created: its record and the whole key (shown once, never stored).
#[derive(Debug, Clone)]
pub struct NewKey {
    /// What the key file keeps.
    pub record: KeyRecord,
    /// The key to hand to its user.
    pub secret: String,
}

impl invariant_control::Document for KeyFile {
    const NAME: &'static str = invariant_control::KEYS;

    fn revision(&self) -> u64 {
        self.revision
    }
}

/// The keys document of the shared control state (`invariant_control`): in a file on one
/// node, in Redis for replicas.
#[derive(Debug, Clone)]
pub struct KeyStore {
    control: invariant_control::Control,
}

impl KeyStore {
    /// The store in `control` (never written: no keys yet; created by the first key).
    pub fn new(control: invariant_control::Control) -> Self {
        Self { control }
    }

    /// Where the keys are kept (a path or a Redis URL without its password).
    pub fn place(&self) -> String {
        self.control.backend().place()
    }

    /// The keys as they are now (none when never written).
    pub fn read(&self) -> Result<KeyFile, AuthError> {
        self.control.load().map_err(AuthError::from)
    }

    /// Applies `change` to the newest keys by compare-and-set (rebuilt on the fresher keys
    /// when another writer got there first) and stores them durably.
    fn update<T>(&self, mut change: impl FnMut(&mut KeyFile) -> Result<T, AuthError>) -> Result<T, AuthError> {
        let (_, out) = self.control.update::<KeyFile, T, AuthError>(None, |latest| {
            let mut next = latest.clone();
            let out = change(&mut next)?;
            next.revision = latest.revision + 1;
            Ok((next, out))
        })?;
        Ok(out)
    }

    /// Creates a key named `name` with `roles` in `corridors`, by `actor`.
    pub fn create(
        &self,
        pepper: &Pepper,
        name: &str,
        roles: BTreeSet<Role>,
        corridors: &Corridors,
        actor: &str,
    ) -> Result<NewKey, AuthError> {
        let name = name.trim();
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(AuthError::Invalid(
                "a key needs a name of 1 to 128 printable characters".into(),
            ));
        }
        if roles.is_empty() {
            return Err(AuthError::Invalid("a key needs at least one role".into()));
        }
        let mut raw = [0u8; ID_HEX / 2 + SECRET_HEX / 2];
        getrandom::fill(&mut raw).map_err(|e| AuthError::Invalid(format!("no randomness: {e}")))?;
        let (id_bytes, secret_bytes) = raw.split_at(ID_HEX / 2);
        let id = hex::encode(id_bytes);
        let secret = format!("{KEY_PREFIX}{id}_{}", hex::encode(secret_bytes));
        let mut mac = pepper.mac();
        mac.update(secret.as_bytes());
        let record = KeyRecord {
            id: id.clone(),
            name: name.to_string(),
            roles,
            corridors: corridors.names(),
            created_at: now(),
            created_by: actor.to_string(),
            revoked_at: None,
            revoked_by: None,
            mac: hex::encode(mac.finalize().into_bytes()),
        };
        self.update(|file| {
            if file.keys.contains_key(&id) {
                return Err(AuthError::Invalid("key id collision: try again".into()));
            }
            file.keys.insert(id.clone(), record.clone());
            Ok(())
        })?;
        Ok(NewKey { record, secret })
    }

    /// Revokes the key `id`, by `actor` (revoking a revoked key changes nothing).
    pub fn revoke(&self, id: &str, actor: &str) -> Result<KeyRecord, AuthError> {
        self.update(|file| {
            let record = file
                .keys
                .get_mut(id)
                .ok_or_else(|| AuthError::NoSuchKey(id.to_string()))?;
            if record.revoked_at.is_none() {
                record.revoked_at = Some(now());
                record.revoked_by = Some(actor.to_string());
            }
            Ok(record.clone())
        })
    }
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// One key as the verifier holds it.
#[derive(Debug)]
struct Held {
    mac: Vec<u8>,
    principal: Principal,
    revoked: bool,
}

/// Keys already verified, at most this many (past it, keys are verified every time).
const VERIFIED_CAPACITY: usize = 4096;

/// The verifying side: the keys of one revision of the key file under the pepper. Keys that
/// verified are remembered (for this revision only: a reload, e.g. a revocation, starts
/// afresh), so a key in use costs one lookup per request instead of an HMAC.
#[derive(Debug)]
pub struct Keyring {
    revision: u64,
    keys: HashMap<String, Held>,
    mac: Hmac<Sha256>,
    verified: std::sync::RwLock<HashMap<Box<str>, Principal>>,
}

impl Keyring {
    /// The keyring of `file` under `pepper`. A record whose roles, corridors or digest cannot
    /// be used is left out (and named in the returned warnings), so one bad record does not
    /// lock every caller out.
    pub fn new(file: &KeyFile, pepper: &Pepper) -> (Self, Vec<String>) {
        let mut warnings = Vec::new();
        let mut keys = HashMap::with_capacity(file.keys.len());
        for (id, record) in &file.keys {
            let corridors = match Corridors::parse(&record.corridors) {
                Ok(c) => c,
                Err(e) => {
                    warnings.push(format!("key {id}: {e}"));
                    continue;
                }
            };
            let Ok(mac) = hex::decode(&record.mac) else {
                warnings.push(format!("key {id}: its digest is not hex"));
                continue;
            };
            let roles = record.roles.iter().fold(0, |bits, r| bits | r.bit());
            let principal = Principal::new(id, &record.name, roles, corridors);
            keys.insert(
                id.clone(),
                Held {
                    mac,
                    principal,
                    revoked: record.revoked_at.is_some(),
                },
            );
        }
        let ring = Self {
            revision: file.revision,
            keys,
            mac: pepper.mac(),
            verified: Default::default(),
        };
        (ring, warnings)
    }

    /// The key file revision this keyring was built from.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Keys that are not revoked.
    pub fn active_keys(&self) -> usize {
        self.keys.values().filter(|k| !k.revoked).count()
    }

    /// The caller presenting `key`: its digest must match the stored one (compared in
    /// constant time) and it must not be revoked.
    pub fn authenticate(&self, key: &str) -> Result<Principal, AuthError> {
        if let Some(p) = self.verified.read().unwrap_or_else(|p| p.into_inner()).get(key) {
            return Ok(p.clone());
        }
        let id = split_key(key).ok_or(AuthError::Malformed)?;
        let held = self.keys.get(id).ok_or(AuthError::Unknown)?;
        let mut mac = self.mac.clone();
        mac.update(key.as_bytes());
        mac.verify_slice(&held.mac).map_err(|_| AuthError::Unknown)?;
        if held.revoked {
            return Err(AuthError::Revoked(id.to_string()));
        }
        let mut verified = self.verified.write().unwrap_or_else(|p| p.into_inner());
        if verified.len() < VERIFIED_CAPACITY {
            verified.insert(key.into(), held.principal.clone());
        }
        Ok(held.principal.clone())
    }
}

/// The key presented in an `Authorization` header value (`Bearer <key>`, the scheme in any
/// case); `Err(Malformed)` for another scheme.
pub fn bearer(header: &str) -> Result<&str, AuthError> {
    let header = header.trim();
    let (scheme, key) = header.split_once(' ').ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed);
    }
    Ok(key.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_at(path: &Path) -> KeyStore {
        let backend = invariant_control::file::FileBackend::new([(invariant_control::KEYS, path.to_path_buf())]);
        KeyStore::new(invariant_control::Control::new(std::sync::Arc::new(backend)))
    }

    fn pepper() -> Pepper {
        Pepper::new(b"0123456789abcdef-test-pepper".to_vec()).unwrap()
    }

    fn roles(names: &[&str]) -> BTreeSet<Role> {
        names.iter().map(|n| Role::parse(n).unwrap()).collect()
    }

    fn ring(store: &KeyStore) -> Keyring {
        let (ring, warnings) = Keyring::new(&store.read().unwrap(), &pepper());
        assert!(warnings.is_empty(), "{warnings:?}");
        ring
    }

    #[test]
    fn a_created_key_authenticates_with_its_roles_and_corridors_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_at(&dir.path().join("keys.json"));
        let corridors = Corridors::parse(&["uae-sa", "US-EG"]).unwrap();
        let key = store
            .create(
                &pepper(),
                "checkout",
                roles(&["infer", "features:read"]),
                &corridors,
                "ops",
            )
            .unwrap();
        assert!(key.secret.starts_with("inv_"));
        let text = std::fs::read_to_string(dir.path().join("keys.json")).unwrap();
        assert!(!text.contains(&key.secret[20..]), "the secret is never stored");
        let ring = ring(&store);
        let p = ring.authenticate(&key.secret).unwrap();
        assert_eq!(p.id(), key.record.id);
        assert!(p.may(Role::Infer, "UAE-SA"));
        assert!(p.may(Role::FeaturesRead, "US-EG"));
        assert!(!p.may(Role::Infer, "UK-NG"));
        assert!(!p.may(Role::FeaturesWrite, "UAE-SA"));
        assert!(!p.may(Role::Admin, "UAE-SA"));
        assert!(!p.may_everywhere(Role::Infer));
    }

    #[test]
    fn wrong_secrets_malformed_keys_other_peppers_and_revoked_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_at(&dir.path().join("keys.json"));
        let key = store
            .create(&pepper(), "svc", roles(&["admin"]), &Corridors::All, "ops")
            .unwrap();
        let ring = ring(&store);
        // Verified once, remembered: the second presentation is the same caller.
        assert_eq!(
            ring.authenticate(&key.secret).unwrap(),
            ring.authenticate(&key.secret).unwrap()
        );
        // One flipped secret digit.
        let mut wrong = key.secret.clone().into_bytes();
        let last = wrong.len() - 1;
        wrong[last] = if wrong[last] == b'0' { b'1' } else { b'0' };
        let wrong = String::from_utf8(wrong).unwrap();
        assert!(matches!(ring.authenticate(&wrong), Err(AuthError::Unknown)));
        for bad in ["", "inv_", "Bearer x", "inv_zz_yy", &key.secret[..key.secret.len() - 1]] {
            assert!(matches!(ring.authenticate(bad), Err(AuthError::Malformed)), "{bad}");
        }
        let (other, _) = Keyring::new(
            &store.read().unwrap(),
            &Pepper::new(b"another pepper, 16+".to_vec()).unwrap(),
        );
        assert!(matches!(other.authenticate(&key.secret), Err(AuthError::Unknown)));
        store.revoke(&key.record.id, "ops").unwrap();
        let ring = self::ring(&store);
        assert!(matches!(ring.authenticate(&key.secret), Err(AuthError::Revoked(_))));
        assert_eq!(ring.active_keys(), 0);
        assert!(matches!(store.revoke("nope", "ops"), Err(AuthError::NoSuchKey(_))));
    }

    #[test]
    fn concurrent_creations_are_all_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let store = store_at(&path);
                std::thread::spawn(move || {
                    for j in 0..5 {
                        store
                            .create(&pepper(), &format!("k{i}-{j}"), roles(&["infer"]), &Corridors::All, "t")
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let file = store_at(&path).read().unwrap();
        assert_eq!(file.keys.len(), 20);
        assert_eq!(file.revision, 20);
    }

    #[test]
    fn roles_corridors_bearer_and_pepper_parsing() {
        assert_eq!(Role::parse("Features:Write").unwrap(), Role::FeaturesWrite);
        assert!(matches!(Role::parse("root"), Err(AuthError::UnknownRole(_))));
        assert_eq!(Corridors::parse(&["UAE-SA", "*"]).unwrap(), Corridors::All);
        assert!(Corridors::parse::<&str>(&[]).is_err());
        assert!(matches!(
            Corridors::parse(&["nowhere"]),
            Err(AuthError::BadCorridor(..))
        ));
        assert_eq!(bearer("bearer  inv_x ").unwrap(), "inv_x");
        assert!(bearer("Basic abc").is_err());
        assert!(Pepper::new(b"short".to_vec()).is_err());
        assert_eq!(format!("{:?}", pepper()), "Pepper(..)");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pepper");
        if std::env::var_os(PEPPER_ENV).is_none() {
            assert!(Pepper::load(&file, false).unwrap().is_none());
            let made = Pepper::load(&file, true).unwrap().unwrap();
            let again = Pepper::load(&file, false).unwrap().unwrap();
            assert_eq!(made.0, again.0);
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }

    #[test]
    fn a_bad_record_is_left_out_with_a_warning() {
        let mut file = KeyFile::default();
        file.keys.insert(
            "00".into(),
            KeyRecord {
                id: "00".into(),
                name: "bad".into(),
                roles: roles(&["infer"]),
                corridors: vec!["nowhere".into()],
                created_at: now(),
                created_by: "t".into(),
                revoked_at: None,
                revoked_by: None,
                mac: "00".into(),
            },
        );
        let (ring, warnings) = Keyring::new(&file, &pepper());
        assert_eq!(warnings.len(), 1);
        assert_eq!(ring.active_keys(), 0);
    }
}
