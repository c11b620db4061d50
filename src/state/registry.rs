//! The embedded client registry's operations (RFC 7591 registration, RFC 7592 management),
//! each on the permit `auth` issued for it, and the single-use ledger for registrations
//! served by an upstream provider.

use bytes::Bytes;

use super::clients::{self, StoredClient};
use super::error::StateError;
use super::{now, Ledger, Registered, Reply, StateService};
use crate::auth::registration::{Grants, Reach, Refusal};
use crate::auth::{RegistryGrant, RegistryPermit};
use crate::routing::RegistryOp;

impl StateService {
    fn client_uri(&self, id: &str) -> String {
        format!("{}/{id}", self.registration_uri.trim_end_matches('/'))
    }

    /// A stored client and the record it was read from (to replace it only if unchanged).
    async fn load_client(&self, id: &str) -> Result<Option<(StoredClient, Vec<u8>)>, StateError> {
        match self.store.get_client(id).await? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(|c| Some((c, bytes)))
                .map_err(|_| StateError::Corrupt("a stored client does not decode")),
        }
    }

    async fn save_client(&self, client: &StoredClient) -> Result<(), StateError> {
        let bytes = serde_json::to_vec(client)
            .map_err(|_| StateError::Corrupt("a client does not encode"))?;
        self.store
            .put_client(&client.client_id, &bytes)
            .await
            .map_err(StateError::Storage)
    }

    /// A registry operation, authorised by `grant`.
    /// Takes a single-use token before its registration is forwarded to an upstream: 401 if
    /// it was used, 503 (the token given back) if the store does not answer.
    pub async fn take_token(&self, ledger: &Ledger) -> Result<(), StateError> {
        let taken = match self.store.take_token(ledger).await {
            Ok(taken) => taken,
            Err(e) => {
                // The write may still land: given back, so that the token is not lost.
                let _ = self.store.give_back_token(ledger).await;
                return Err(StateError::Storage(e));
            }
        };
        if taken {
            Ok(())
        } else {
            Err(StateError::InvalidToken(
                "The initial access token was already used (single use)".into(),
            ))
        }
    }

    /// Gives back a token [`StateService::take_token`] took: the upstream did not register.
    pub async fn give_back_token(&self, ledger: &Ledger) -> Result<(), StateError> {
        Ok(self.store.give_back_token(ledger).await?)
    }

    /// A registry operation, as its permit says.
    pub async fn registration(
        &self,
        permit: &RegistryPermit,
        body: Bytes,
    ) -> Result<Reply, StateError> {
        let (op, grant) = (permit.op(), permit.grant());
        let id = match op {
            RegistryOp::Register => {
                // Validated before the ledger is touched: a refused registration does not use
                // a single-use token up.
                let lasting = permit
                    .reach()
                    .and_then(|r| r.lasting_grants())
                    .map(|g| g.grant_types());
                let (client, token) = clients::register(&body, now(), lasting)?;
                let bytes = serde_json::to_vec(&client)
                    .map_err(|_| StateError::Corrupt("a client does not encode"))?;
                match self
                    .store
                    .register_client(permit.ledger(), &client.client_id, &bytes)
                    .await?
                {
                    Registered::Stored => {}
                    Registered::TokenUsed => {
                        return Err(StateError::InvalidToken(
                            "The initial access token was already used (single use)".into(),
                        ))
                    }
                    Registered::IdTaken => {
                        return Err(StateError::InvalidClientMetadata(
                            "preferred_client_id is in use by another client".into(),
                        ))
                    }
                }
                let mut view = client.view(&self.client_uri(&client.client_id));
                view.insert("registration_access_token".into(), token.into());
                return Ok(Reply::Json {
                    status: 201,
                    body: serde_json::to_vec(&view).unwrap_or_default(),
                    pragma_no_cache: true,
                });
            }
            RegistryOp::List => {
                if *grant != RegistryGrant::MasterToken {
                    return Err(StateError::InvalidToken(
                        "Listing clients requires a master token".into(),
                    ));
                }
                let mut all = Vec::new();
                for bytes in self.store.clients().await.map_err(StateError::Storage)? {
                    if let Ok(c) = serde_json::from_slice::<StoredClient>(&bytes) {
                        all.push(serde_json::Value::Object(
                            c.view(&self.client_uri(&c.client_id)),
                        ));
                    }
                }
                return Ok(Reply::Json {
                    status: 200,
                    body: serde_json::to_vec(&all).unwrap_or_default(),
                    pragma_no_cache: true,
                });
            }
            RegistryOp::Read { id } | RegistryOp::Update { id } | RegistryOp::Delete { id } => id,
        };
        let loaded = if clients::valid_client_id(id) {
            self.load_client(id).await?
        } else {
            None
        };
        let (client, stored) = match loaded {
            Some((c, bytes)) => (Some(c), bytes),
            None => (None, Vec::new()),
        };
        // RFC 7592 §2: a registration access token for a client that does not exist, or of
        // another client, is answered 401 alike; a master token learns that it does not exist.
        let client = match (grant, client) {
            (RegistryGrant::MasterToken, Some(c)) => c,
            (RegistryGrant::MasterToken, None) => return Err(StateError::NotFound("Client")),
            (RegistryGrant::ClientToken { digest }, Some(c)) if c.token_matches(digest) => c,
            _ => {
                return Err(StateError::InvalidToken(
                    "The registration access token is not valid for this client".into(),
                ))
            }
        };
        match op {
            RegistryOp::Update { .. } => {
                let own_token = matches!(grant, RegistryGrant::ClientToken { .. });
                if own_token {
                    // The client keeps to what it was registered for (issue 16 §1).
                    let reach = match client
                        .registered_grants
                        .as_ref()
                        .and_then(|g| Grants::of_grant_types(g.iter().map(String::as_str)))
                    {
                        Some(g) => Reach::Grants(g),
                        None => Reach::Full,
                    };
                    reach
                        .judge(&self.rules, &body)
                        .map_err(|refusal| match refusal {
                            Refusal::Metadata(why) => StateError::InvalidClientMetadata(why),
                            Refusal::NotPermitted { why, scope } => {
                                StateError::NotPermitted { why, scope }
                            }
                            Refusal::NeedsCredential => StateError::InvalidToken(
                                "The registration access token does not permit this update".into(),
                            ),
                        })?;
                }
                let mut updated = clients::update(&client, &body)?;
                let rotated = if self.rotate_token && own_token {
                    let token = clients::random(32)?;
                    updated.registration_access_token_sha256 = clients::token_digest(&token);
                    Some(token)
                } else {
                    None
                };
                let bytes = serde_json::to_vec(&updated)
                    .map_err(|_| StateError::Corrupt("a client does not encode"))?;
                // With rotation, the record read is the one replaced: of two updates with the
                // same token, one wins and the other (its token rotated away) is refused.
                // Without, the last update wins, as before.
                let replaced = match rotated {
                    Some(_) => {
                        self.store
                            .replace_client(&updated.client_id, &stored, &bytes)
                            .await?
                    }
                    None => self.save_client(&updated).await.map(|()| true)?,
                };
                if !replaced {
                    return Err(StateError::InvalidToken(
                        "The client was changed meanwhile: the registration access token is not valid for this client"
                            .into(),
                    ));
                }
                let mut view = updated.view(&self.client_uri(&updated.client_id));
                if let Some(token) = rotated {
                    view.insert("registration_access_token".into(), token.into());
                }
                Ok(Reply::Json {
                    status: 200,
                    body: serde_json::to_vec(&view).unwrap_or_default(),
                    pragma_no_cache: true,
                })
            }
            RegistryOp::Delete { .. } => {
                self.store
                    .delete_client(&client.client_id)
                    .await
                    .map_err(StateError::Storage)?;
                Ok(Reply::NoContent)
            }
            _ => Ok(Reply::Json {
                status: 200,
                body: serde_json::to_vec(&client.view(&self.client_uri(&client.client_id)))
                    .unwrap_or_default(),
                pragma_no_cache: true,
            }),
        }
    }
}
