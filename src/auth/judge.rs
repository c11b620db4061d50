//! A registration body judged against its permit: the software statement first (its claims
//! merged over the body), then the registration policy (`registration.rs`).

use serde_json::Value;

use super::permit::RegistryPermit;
use super::registration::{Reach, Refusal};
use super::statement::{StatementError, Statements};
use super::Denial;
use crate::routing::RegistryOp;

impl super::Authoriser {
    /// A registration's body against what its credential reaches: its software statement
    /// (verified; its claims over the body's members), privileged metadata, the client's
    /// `scope`, its grants under a narrowed scope or open registration. Counted with the
    /// registration policy's other answers. `Some(body)`: the metadata with a statement's
    /// claims merged in, for the embedded registry (a provider upstream gets the body as sent).
    pub async fn judge_registration(
        &self,
        permit: &RegistryPermit,
        body: &[u8],
    ) -> Result<Option<Vec<u8>>, Denial> {
        let (Some(reach), RegistryOp::Register) = (permit.reach(), permit.op()) else {
            return Ok(None);
        };
        let judged = self.judge(&reach, body).await;
        match &judged {
            Ok(_) => self.metrics.accepted(crate::metrics::Policy::Registration),
            Err(d) => self
                .metrics
                .rejected(crate::metrics::Policy::Registration, d.reason()),
        }
        judged
    }

    async fn judge(&self, reach: &Reach, body: &[u8]) -> Result<Option<Vec<u8>>, Denial> {
        let merged = match &self.statements {
            Some(statements) => self.with_statement(statements, reach, body).await?,
            None => None,
        };
        reach
            .judge(&self.registration_rules, merged.as_deref().unwrap_or(body))
            .map_err(|refusal| match refusal {
                Refusal::Metadata(why) => Denial::InvalidClientMetadata(why),
                Refusal::NotPermitted { why, scope } => Denial::NotPermitted { why, scope },
                Refusal::NeedsCredential => self.missing(),
            })?;
        Ok(merged)
    }

    /// The body with its software statement's claims merged in; None without a statement.
    async fn with_statement(
        &self,
        statements: &Statements,
        reach: &Reach,
        body: &[u8],
    ) -> Result<Option<Vec<u8>>, Denial> {
        let Ok(Value::Object(metadata)) = serde_json::from_slice::<Value>(body) else {
            // Not client metadata: the policy below says so (or a master token sends it on).
            return Ok(None);
        };
        let statement = match metadata.get("software_statement") {
            None if statements.required && *reach != Reach::Master => {
                return Err(Denial::InvalidSoftwareStatement(
                    "A software statement is required".into(),
                ))
            }
            None => return Ok(None),
            Some(Value::String(s)) => s,
            Some(_) => {
                return Err(Denial::InvalidSoftwareStatement(
                    "The software statement must be a string (a JWT)".into(),
                ))
            }
        };
        let claims = statements.verify(statement).await.map_err(|e| match e {
            StatementError::Invalid(why) => Denial::InvalidSoftwareStatement(why),
            StatementError::Unapproved(why) => Denial::UnapprovedSoftwareStatement(why),
        })?;
        let merged = super::statement::merged(&metadata, &claims);
        Ok(Some(serde_json::to_vec(&merged).unwrap_or_default()))
    }
}
