//! Who is calling, and whether they may: the [`Authority`] turns the `authorization` a
//! transport read (HTTP header or gRPC metadata, same key) into an
//! [`invariant_auth::Principal`], and [`InferenceService::authorize`] checks its role and
//! corridor. Every transport and every endpoint goes through these two, once per request:
//! a missing, malformed, unknown or revoked key is [`ServeError::Unauthenticated`] (401); a
//! key without the role, or asking for a corridor outside its scope, is
//! [`ServeError::PermissionDenied`] (403), with the same message whether the corridor exists
//! or not.
//!
//! The keys are a document of the shared control state; the convergence watcher re-reads them
//! on notification and every `control.poll_ms`, so a key created or revoked with
//! `invariant keys` (on this host, or on any replica sharing the Redis backend) takes effect
//! within that period.

use crate::config::Config;
use crate::request::Metadata;
use crate::{InferenceService, ServeError};
use arc_swap::ArcSwap;
use invariant_auth::{AuthError, KeyStore, Keyring, Pepper, Principal, Role};
use invariant_core::CorridorId;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// What a request needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need<'a> {
    /// Any valid key (server and model metadata).
    AnyKey,
    /// `role` in every corridor (a `*` key): changes and views that span corridors.
    Everywhere(Role),
    /// `role` in this corridor (as named by the request, before it is checked to exist).
    In(Role, &'a str),
}

/// The verifying state of one server.
#[derive(Debug)]
pub struct Authority {
    keys: Option<Keys>,
}

#[derive(Debug)]
struct Keys {
    store: KeyStore,
    pepper_path: PathBuf,
    pepper: Mutex<Option<Pepper>>,
    ring: ArcSwap<Keyring>,
}

impl Authority {
    /// The authority of `config`: its key file and pepper, or nothing to check when the server
    /// was started with `--dev-no-auth`.
    pub fn open(config: &Config, control: invariant_control::Control) -> Result<Self, AuthError> {
        if config.auth.disabled_for_development {
            return Ok(Self { keys: None });
        }
        let store = KeyStore::new(control);
        let file = store.read()?;
        let pepper_path = config.pepper_path();
        let pepper = Pepper::load(&pepper_path, false)?;
        let ring = match &pepper {
            Some(p) => build(&file, p),
            None if file.keys.is_empty() => empty_ring(),
            None => {
                return Err(AuthError::Pepper(format!(
                    "{} holds keys but there is no pepper: set {} or restore {}",
                    store.place(),
                    invariant_auth::PEPPER_ENV,
                    pepper_path.display()
                )))
            }
        };
        Ok(Self {
            keys: Some(Keys {
                store,
                pepper_path,
                pepper: Mutex::new(pepper),
                ring: ArcSwap::from_pointee(ring),
            }),
        })
    }

    /// An authority that lets everyone in as [`Principal::development`].
    pub fn disabled() -> Self {
        Self { keys: None }
    }

    /// Whether authentication is off (`--dev-no-auth`).
    pub fn is_disabled(&self) -> bool {
        self.keys.is_none()
    }

    /// Keys that may be used now (0 when authentication is off).
    pub fn active_keys(&self) -> usize {
        self.keys.as_ref().map_or(0, |k| k.ring.load().active_keys())
    }

    /// The caller presenting `authorization` (an `Authorization` header value).
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, ServeError> {
        let Some(keys) = &self.keys else {
            return Ok(Principal::development());
        };
        let unauthenticated = |e: AuthError| ServeError::Unauthenticated(e.to_string());
        let header = authorization.ok_or(AuthError::Missing).map_err(unauthenticated)?;
        let key = invariant_auth::bearer(header).map_err(unauthenticated)?;
        keys.ring.load().authenticate(key).map_err(unauthenticated)
    }

    /// The revision of the keys in force (0 when authentication is off).
    pub fn revision(&self) -> u64 {
        self.keys.as_ref().map_or(0, |k| k.ring.load().revision())
    }

    /// Re-reads the keys; true when they changed.
    pub fn refresh(&self) -> Result<bool, AuthError> {
        let Some(keys) = &self.keys else {
            return Ok(false);
        };
        let file = keys.store.read()?;
        if file.revision == keys.ring.load().revision() {
            return Ok(false);
        }
        let mut pepper = keys.pepper.lock().unwrap_or_else(|p| p.into_inner());
        if pepper.is_none() {
            // The first `invariant keys create` writes the pepper file.
            *pepper = Pepper::load(&keys.pepper_path, false)?;
        }
        let Some(p) = pepper.as_ref() else {
            return Err(AuthError::Pepper(format!(
                "{} holds keys but there is no pepper at {}",
                keys.store.place(),
                keys.pepper_path.display()
            )));
        };
        keys.ring.store(Arc::new(build(&file, p)));
        Ok(true)
    }
}

fn empty_ring() -> Keyring {
    // No key verifies against an empty file, whatever the pepper.
    let pepper = Pepper::new(vec![0u8; 32]).unwrap_or_else(|_| unreachable!("32 bytes is long enough"));
    Keyring::new(&invariant_auth::KeyFile::default(), &pepper).0
}

fn build(file: &invariant_auth::KeyFile, pepper: &Pepper) -> Keyring {
    let (ring, warnings) = Keyring::new(file, pepper);
    for w in warnings {
        tracing::error!("key file: {w}; that key is refused");
    }
    ring
}

/// The 403 of a caller without `role` in `corridor` (the same whether it exists or not).
fn denied_in(principal: &Principal, role: Role, corridor: &str) -> ServeError {
    ServeError::PermissionDenied(format!(
        "API key {} has no '{role}' access to corridor '{corridor}'",
        principal.id()
    ))
}

impl InferenceService {
    /// The caller of a request, from its metadata's `authorization`.
    pub fn authenticate(&self, metadata: &Metadata) -> Result<Principal, ServeError> {
        self.authority.authenticate(metadata.authorization.as_deref())
    }

    /// The caller of a request, if it has what `need` asks.
    pub fn authorize(&self, metadata: &Metadata, need: Need<'_>) -> Result<Principal, ServeError> {
        let principal = self.authenticate(metadata)?;
        check(&principal, need)?;
        Ok(principal)
    }

    /// The corridor a request of `principal` acts in, resolved as
    /// [`InferenceService::corridor_of`] does, once `principal` is known to have `role` in it:
    /// a corridor outside the key's scope is refused before it is looked up.
    pub fn corridor_for(
        &self,
        principal: &Principal,
        role: Role,
        named: Option<&str>,
        parameters: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<CorridorId, ServeError> {
        // A key of every corridor (and the development caller) needs no look at the name.
        if principal.may_everywhere(role) {
            return self.corridor_of(named, parameters);
        }
        if let Some(name) = self.named_corridor(named, parameters)? {
            check(principal, Need::In(role, &name))?;
        }
        self.corridor_of(named, parameters)
    }

    /// The corridor a request names (header or parameters, normalised), else the default;
    /// `None` when none is named and there is no default (an error for `corridor_of`).
    fn named_corridor(
        &self,
        named: Option<&str>,
        parameters: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Option<String>, ServeError> {
        let name = match (named, parameters.get("corridor")) {
            (Some(h), _) => h.to_string(),
            (None, Some(serde_json::Value::String(p))) => p.clone(),
            (None, Some(_)) => return Ok(None), // corridor_of names the fault
            (None, None) => match &self.config.server.default_corridor {
                Some(d) => return Ok(Some(d.to_string())),
                None => return Ok(None),
            },
        };
        Ok(Some(
            CorridorId::parse(&name)
                .map_err(|e| ServeError::invalid(format!("corridor: {e}")))?
                .to_string(),
        ))
    }
}

/// Whether `principal` has what `need` asks.
pub fn check(principal: &Principal, need: Need<'_>) -> Result<(), ServeError> {
    match need {
        Need::AnyKey => Ok(()),
        Need::Everywhere(role) if principal.may_everywhere(role) => Ok(()),
        Need::Everywhere(role) => Err(ServeError::PermissionDenied(format!(
            "API key {} needs the '{role}' role in every corridor ('*') for this",
            principal.id()
        ))),
        // The corridor as declared (the usual spelling) needs no parse.
        Need::In(role, corridor) if principal.may(role, corridor) => Ok(()),
        Need::In(role, corridor) => {
            let id = CorridorId::parse(corridor).map_err(|e| ServeError::invalid(format!("corridor: {e}")))?;
            if principal.may(role, id.as_str()) {
                Ok(())
            } else {
                Err(denied_in(principal, role, id.as_str()))
            }
        }
    }
}
