//! Managed policies: versions, reads, deletion and validation.

use super::*;

impl PolicyService {
    /// `PUT /v1/policies/{name}`.
    pub async fn put_policy(
        &self,
        caller: &Caller,
        name: &str,
        text: &str,
    ) -> Result<PutPolicyResult, PolicyError> {
        check_name("policy name", name)?;
        self.guard_with(
            caller,
            "policy:PutPolicy",
            &format!("policy/{name}"),
            &[(KEY_POLICY_NAME, name)],
        )
        .await?;
        if builtin::document(name).is_some() {
            return Err(PolicyError::Conflict(format!(
                "{name} is a built-in policy and cannot be changed"
            )));
        }
        let (doc, warnings) = self.parse_doc(text, PolicyKind::Identity)?;
        let version = self
            .store
            .put_version(caller.tenant.as_str(), name, &doc, self.clock.now())
            .await?;
        self.changed(&caller.tenant);
        Ok(PutPolicyResult {
            name: name.into(),
            version,
            warnings: warnings.iter().map(issue_view).collect(),
        })
    }

    /// `GET /v1/policies`.
    pub async fn list_policies(&self, caller: &Caller) -> Result<Vec<PolicySummary>, PolicyError> {
        self.guard(caller, "policy:ListPolicies", "policy/*")
            .await?;
        let mut out: Vec<PolicySummary> = builtin::BUILTIN
            .iter()
            .map(|(name, _)| PolicySummary {
                name: (*name).into(),
                default_version: 1,
                versions: vec![1],
                builtin: true,
            })
            .collect();
        for (name, default_version, versions) in
            self.store.list_policies(caller.tenant.as_str()).await?
        {
            out.push(PolicySummary {
                name,
                default_version,
                versions,
                builtin: false,
            });
        }
        Ok(out)
    }

    /// `GET /v1/policies/{name}/versions`: the stored versions, oldest first.
    pub async fn list_policy_versions(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<Vec<PolicyVersionView>, PolicyError> {
        self.guard(
            caller,
            "policy:ListPolicyVersions",
            &format!("policy/{name}"),
        )
        .await?;
        if builtin::document(name).is_some() {
            return Ok(vec![PolicyVersionView {
                version: 1,
                default: true,
                created_at: 0,
            }]);
        }
        let versions = self
            .store
            .list_versions(caller.tenant.as_str(), name)
            .await?;
        if versions.is_empty() {
            return Err(PolicyError::NotFound(format!("policy {name:?} not found")));
        }
        Ok(versions
            .into_iter()
            .map(|v| PolicyVersionView {
                version: v.version,
                default: v.is_default,
                created_at: v.created_at,
            })
            .collect())
    }

    /// `GET /v1/policies/{name}[?version=N]`.
    pub async fn get_policy(
        &self,
        caller: &Caller,
        name: &str,
        version: Option<i64>,
    ) -> Result<PolicyView, PolicyError> {
        self.guard(caller, "policy:GetPolicy", &format!("policy/{name}"))
            .await?;
        let not_found = || {
            PolicyError::NotFound(match version {
                Some(v) => format!("policy {name:?} has no version {v}"),
                None => format!("policy {name:?} not found"),
            })
        };
        if let Some(text) = builtin::document(name) {
            if version.is_some_and(|v| v != 1) {
                return Err(not_found());
            }
            let document =
                serde_json::from_str(text).map_err(|e| PolicyError::BadRequest(e.to_string()))?;
            return Ok(PolicyView {
                name: name.into(),
                version: 1,
                default: true,
                builtin: true,
                document,
            });
        }
        let v = self
            .store
            .get_version(caller.tenant.as_str(), name, version)
            .await?
            .ok_or_else(not_found)?;
        let document = serde_json::from_str(&v.document)
            .map_err(|e| PolicyError::BadRequest(e.to_string()))?;
        Ok(PolicyView {
            name: name.into(),
            version: v.version,
            default: v.is_default,
            builtin: false,
            document,
        })
    }

    /// `DELETE /v1/policies/{name}`: refused while the policy is attached or a boundary.
    pub async fn delete_policy(&self, caller: &Caller, name: &str) -> Result<(), PolicyError> {
        self.guard_with(
            caller,
            "policy:DeletePolicy",
            &format!("policy/{name}"),
            &[(KEY_POLICY_NAME, name)],
        )
        .await?;
        if builtin::document(name).is_some() {
            return Err(PolicyError::Conflict(format!(
                "{name} is a built-in policy and cannot be deleted"
            )));
        }
        let uses = self.store.uses(caller.tenant.as_str(), name).await?;
        if uses > 0 {
            return Err(PolicyError::Conflict(format!(
                "policy {name:?} is attached or used as a boundary {uses} time(s); detach it first"
            )));
        }
        if !self
            .store
            .delete_policy(caller.tenant.as_str(), name, self.clock.now())
            .await?
        {
            return Err(PolicyError::NotFound(format!("policy {name:?} not found")));
        }
        self.forget_compiled(caller.tenant.as_str(), name);
        self.changed(&caller.tenant);
        Ok(())
    }

    /// `POST /v1/policies:validate`.
    pub async fn validate(
        &self,
        caller: &Caller,
        text: &str,
        kind: PolicyKind,
    ) -> Result<Validation, PolicyError> {
        self.guard(caller, "policy:ValidatePolicy", "policy/*")
            .await?;
        Ok(match Policy::parse(text, kind, self.limits()) {
            Ok(p) => {
                let mut warnings = p.warnings;
                if let Ok(value) = serde_json::from_str::<Value>(text) {
                    warnings.extend(condition_key_warnings(&value));
                }
                Validation {
                    valid: true,
                    errors: vec![],
                    warnings: warnings.iter().map(issue_view).collect(),
                }
            }
            Err(errors) => Validation {
                valid: false,
                errors: errors.iter().map(issue_view).collect(),
                warnings: vec![],
            },
        })
    }
}
