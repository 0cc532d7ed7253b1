//! What grants permissions: groups and members, attachments, boundaries, tags, resource
//! policies and guardrails.

use super::*;

/// Policies attached to one principal or one group. With [`MAX_GROUPS_PER_PRINCIPAL`], this
/// bounds the policies one decision reads (see docs/BENCHMARKS.md).
pub const MAX_ATTACHMENTS: usize = 20;
/// Groups one principal belongs to (directly or through nesting).
pub const MAX_GROUPS_PER_PRINCIPAL: usize = 10;

impl PolicyService {
    pub(crate) async fn policy_exists(
        &self,
        tenant: &TenantId,
        name: &str,
    ) -> Result<(), PolicyError> {
        if builtin::document(name).is_some()
            || self
                .store
                .get_version(tenant.as_str(), name, None)
                .await?
                .is_some()
        {
            Ok(())
        } else {
            Err(PolicyError::NotFound(format!("policy {name:?} not found")))
        }
    }

    pub(super) async fn group_exists(
        &self,
        tenant: &TenantId,
        group: &str,
    ) -> Result<(), PolicyError> {
        if self.store.group_exists(tenant.as_str(), group).await? {
            Ok(())
        } else {
            Err(PolicyError::NotFound(format!("group {group:?} not found")))
        }
    }

    /// `PUT /v1/groups/{group}`; true when created.
    pub async fn put_group(&self, caller: &Caller, group: &str) -> Result<bool, PolicyError> {
        check_name("group name", group)?;
        self.guard(caller, "policy:PutGroup", &format!("group/{group}"))
            .await?;
        let created = self
            .store
            .put_group(caller.tenant.as_str(), group, self.clock.now())
            .await?;
        self.changed(&caller.tenant);
        Ok(created)
    }

    /// `GET /v1/groups`: every group with its members and attached policies.
    pub async fn list_groups(&self, caller: &Caller) -> Result<Vec<GroupView>, PolicyError> {
        self.guard(caller, "policy:ListGroups", "group/*").await?;
        let groups = self.store.list_groups(caller.tenant.as_str()).await?;
        let snapshot = self.snapshot(&caller.tenant).await?;
        Ok(groups
            .into_iter()
            .map(|(name, members)| GroupView {
                policies: snapshot
                    .group_policies
                    .get(&name)
                    .cloned()
                    .unwrap_or_default(),
                name,
                members,
            })
            .collect())
    }

    /// `DELETE /v1/groups/{group}`.
    pub async fn delete_group(&self, caller: &Caller, group: &str) -> Result<(), PolicyError> {
        self.guard(caller, "policy:DeleteGroup", &format!("group/{group}"))
            .await?;
        if !self
            .store
            .delete_group(caller.tenant.as_str(), group, self.clock.now())
            .await?
        {
            return Err(PolicyError::NotFound(format!("group {group:?} not found")));
        }
        self.changed(&caller.tenant);
        Ok(())
    }

    /// `PUT|DELETE /v1/groups/{group}/members/{member}`; a member is a principal id or
    /// `group:<name>`.
    pub async fn set_member(
        &self,
        caller: &Caller,
        group: &str,
        member: &str,
        present: bool,
    ) -> Result<(), PolicyError> {
        let action = if present {
            "policy:AddGroupMember"
        } else {
            "policy:RemoveGroupMember"
        };
        self.guard(caller, action, &format!("group/{group}"))
            .await?;
        self.group_exists(&caller.tenant, group).await?;
        match member.strip_prefix(GROUP_PREFIX) {
            Some(inner) => {
                if inner == group {
                    return Err(PolicyError::BadRequest(
                        "a group cannot contain itself".into(),
                    ));
                }
                self.group_exists(&caller.tenant, inner).await?;
            }
            None => {
                principal_id(member)?;
            }
        }
        let t = caller.tenant.as_str();
        let now = self.clock.now();
        if present {
            // No principal may end up in more groups than the limit, directly or through
            // nesting: adding `group:X` to G puts X's principals in G and G's ancestors too.
            let snap = self.snapshot(&caller.tenant).await?;
            let mut joined: Vec<&str> = vec![group];
            if let Some(up) = snap.groups_of.get(&format!("{GROUP_PREFIX}{group}")) {
                joined.extend(up.iter().map(String::as_str));
            }
            let empty = Vec::new();
            let affected: Vec<(&str, &Vec<String>)> = match member.strip_prefix(GROUP_PREFIX) {
                Some(inner) => snap
                    .groups_of
                    .iter()
                    .filter(|(p, g)| !p.starts_with(GROUP_PREFIX) && g.iter().any(|n| n == inner))
                    .map(|(p, g)| (p.as_str(), g))
                    .collect(),
                None => vec![(member, snap.groups_of.get(member).unwrap_or(&empty))],
            };
            for (principal, groups) in affected {
                let total = groups.len()
                    + joined
                        .iter()
                        .filter(|j| !groups.iter().any(|g| g == *j))
                        .count();
                if total > MAX_GROUPS_PER_PRINCIPAL {
                    return Err(PolicyError::Conflict(format!(
                        "{principal:?} would be in {total} groups; the limit is {MAX_GROUPS_PER_PRINCIPAL}"
                    )));
                }
            }
        }
        if present {
            self.store.add_member(t, group, member, now).await?;
        } else if !self.store.remove_member(t, group, member, now).await? {
            return Err(PolicyError::NotFound(format!(
                "{member:?} is not a member of {group:?}"
            )));
        }
        self.changed(&caller.tenant);
        Ok(())
    }

    /// `PUT|DELETE /v1/{principals|groups}/{target}/policies/{name}`.
    pub async fn set_attachment(
        &self,
        caller: &Caller,
        group: bool,
        target: &str,
        policy: &str,
        present: bool,
    ) -> Result<(), PolicyError> {
        let (kind, action, path) = if group {
            let a = if present {
                "policy:AttachGroupPolicy"
            } else {
                "policy:DetachGroupPolicy"
            };
            ("group", a, format!("group/{target}"))
        } else {
            let a = if present {
                "policy:AttachPrincipalPolicy"
            } else {
                "policy:DetachPrincipalPolicy"
            };
            ("principal", a, format!("principal/{target}"))
        };
        let policy_crn = Crn::new("policy", &caller.tenant, &format!("policy/{policy}"));
        self.guard_with(
            caller,
            action,
            &path,
            &[
                (KEY_POLICY_NAME, policy),
                (KEY_POLICY_CRN, policy_crn.as_str()),
            ],
        )
        .await?;
        if group {
            self.group_exists(&caller.tenant, target).await?;
        } else {
            principal_id(target)?;
        }
        let t = caller.tenant.as_str();
        let now = self.clock.now();
        if present {
            self.policy_exists(&caller.tenant, policy).await?;
            let snap = self.snapshot(&caller.tenant).await?;
            let attached = if group {
                snap.group_policies.get(target)
            } else {
                snap.principal_policies.get(target)
            };
            let count = attached.map_or(0, Vec::len);
            let already = attached.is_some_and(|a| a.iter().any(|p| p == policy));
            if !already && count >= MAX_ATTACHMENTS {
                return Err(PolicyError::Conflict(format!(
                    "{target:?} has {count} policies attached; the limit is {MAX_ATTACHMENTS}"
                )));
            }
            self.store.attach(t, kind, target, policy, now).await?;
        } else if !self.store.detach(t, kind, target, policy, now).await? {
            return Err(PolicyError::NotFound(format!(
                "policy {policy:?} is not attached to {target:?}"
            )));
        }
        self.changed(&caller.tenant);
        Ok(())
    }

    /// `PUT|DELETE /v1/principals/{principal}/boundary`.
    pub async fn set_boundary(
        &self,
        caller: &Caller,
        principal: &str,
        policy: Option<&str>,
    ) -> Result<(), PolicyError> {
        let action = if policy.is_some() {
            "policy:PutPermissionsBoundary"
        } else {
            "policy:DeletePermissionsBoundary"
        };
        // Setting names the new boundary; removing names the one removed, so a policy can
        // forbid a delegated administrator to lift their own.
        let current;
        let boundary = match policy {
            Some(p) => Some(p),
            None => {
                current = self
                    .snapshot(&caller.tenant)
                    .await?
                    .boundaries
                    .get(principal)
                    .cloned();
                current.as_deref()
            }
        };
        let context: Vec<(&str, &str)> = boundary
            .map(|b| (KEY_PERMISSIONS_BOUNDARY, b))
            .into_iter()
            .collect();
        self.guard_with(caller, action, &format!("principal/{principal}"), &context)
            .await?;
        principal_id(principal)?;
        let t = caller.tenant.as_str();
        let now = self.clock.now();
        match policy {
            Some(p) => {
                self.policy_exists(&caller.tenant, p).await?;
                self.store.set_boundary(t, principal, p, now).await?;
            }
            None => {
                if !self.store.delete_boundary(t, principal, now).await? {
                    return Err(PolicyError::NotFound(format!(
                        "{principal:?} has no permissions boundary"
                    )));
                }
            }
        }
        self.changed(&caller.tenant);
        Ok(())
    }

    /// `PUT /v1/principals/{principal}/tags`.
    pub async fn set_tags(
        &self,
        caller: &Caller,
        principal: &str,
        tags: BTreeMap<String, String>,
    ) -> Result<(), PolicyError> {
        self.guard(
            caller,
            "policy:TagPrincipal",
            &format!("principal/{principal}"),
        )
        .await?;
        principal_id(principal)?;
        if tags.len() > 50 {
            return Err(PolicyError::BadRequest(
                "at most 50 tags per principal".into(),
            ));
        }
        for (k, v) in &tags {
            let ok = !k.is_empty()
                && k.len() <= 128
                && v.len() <= 256
                && !v.chars().any(char::is_control)
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-=._:/@".contains(c));
            if !ok {
                return Err(PolicyError::BadRequest(format!("tag {k:?}: keys are 1-128 of letters, digits and +-=._:/@; values at most 256 characters, without control characters")));
            }
        }
        let tags: Vec<(String, String)> = tags.into_iter().collect();
        self.store
            .set_tags(caller.tenant.as_str(), principal, &tags, self.clock.now())
            .await?;
        self.changed(&caller.tenant);
        Ok(())
    }

    /// `PUT /v1/resource-policies/{crn}` and `PUT /v1/guardrails/{name}`.
    pub async fn put_keyed(
        &self,
        caller: &Caller,
        table: Keyed,
        key: &str,
        text: &str,
    ) -> Result<Vec<IssueView>, PolicyError> {
        self.guard_keyed(caller, table, "Put", key).await?;
        self.check_key(caller, table, key)?;
        let kind = match table {
            Keyed::ResourcePolicy => PolicyKind::Resource,
            Keyed::Guardrail => PolicyKind::Identity,
        };
        let (doc, warnings) = self.parse_doc(text, kind)?;
        self.store
            .put_keyed(table, caller.tenant.as_str(), key, &doc, self.clock.now())
            .await?;
        self.changed(&caller.tenant);
        Ok(warnings.iter().map(issue_view).collect())
    }

    /// Guards `policy:<Verb>ResourcePolicy` on `resource-policy/<crn>`, or
    /// `policy:<Verb>Guardrail` on `guardrail/<name>`.
    async fn guard_keyed(
        &self,
        caller: &Caller,
        table: Keyed,
        verb: &str,
        key: &str,
    ) -> Result<(), PolicyError> {
        let (noun, prefix) = match table {
            Keyed::ResourcePolicy => ("ResourcePolicy", "resource-policy"),
            Keyed::Guardrail => ("Guardrail", "guardrail"),
        };
        self.guard(
            caller,
            &format!("policy:{verb}{noun}"),
            &format!("{prefix}/{key}"),
        )
        .await
    }

    fn check_key(&self, caller: &Caller, table: Keyed, key: &str) -> Result<(), PolicyError> {
        match table {
            Keyed::Guardrail => check_name("guardrail name", key),
            Keyed::ResourcePolicy => {
                let tenant_ok = Crn::parse(key).is_ok_and(|c| c.tenant() == caller.tenant.as_str());
                if tenant_ok && key.len() <= 1024 {
                    Ok(())
                } else {
                    Err(PolicyError::BadRequest(format!(
                        "resource {key:?} must be a CRN (pattern) of this tenant: crn:capstan:<service>:{}:<path>",
                        caller.tenant
                    )))
                }
            }
        }
    }

    /// `GET /v1/resource-policies/{crn}` and `GET /v1/guardrails/{name}`.
    pub async fn get_keyed(
        &self,
        caller: &Caller,
        table: Keyed,
        key: &str,
    ) -> Result<Value, PolicyError> {
        self.guard_keyed(caller, table, "Get", key).await?;
        let (doc, _) = self
            .store
            .get_keyed(table, caller.tenant.as_str(), key)
            .await?
            .ok_or_else(|| PolicyError::NotFound(format!("{key:?} not found")))?;
        serde_json::from_str(&doc).map_err(|e| PolicyError::BadRequest(e.to_string()))
    }

    /// `GET /v1/resource-policies` and `GET /v1/guardrails`: (key, document, updated_at).
    pub async fn list_keyed(
        &self,
        caller: &Caller,
        table: Keyed,
    ) -> Result<Vec<(String, Value, i64)>, PolicyError> {
        let (noun, prefix) = match table {
            Keyed::ResourcePolicy => ("ResourcePolicies", "resource-policy"),
            Keyed::Guardrail => ("Guardrails", "guardrail"),
        };
        self.guard(
            caller,
            &format!("policy:List{noun}"),
            &format!("{prefix}/*"),
        )
        .await?;
        self.store
            .list_keyed(table, caller.tenant.as_str())
            .await?
            .into_iter()
            .map(|(key, doc, at)| {
                let doc = serde_json::from_str(&doc)
                    .map_err(|e| PolicyError::BadRequest(e.to_string()))?;
                Ok((key, doc, at))
            })
            .collect()
    }

    /// `DELETE /v1/resource-policies/{crn}` and `DELETE /v1/guardrails/{name}`.
    pub async fn delete_keyed(
        &self,
        caller: &Caller,
        table: Keyed,
        key: &str,
    ) -> Result<(), PolicyError> {
        self.guard_keyed(caller, table, "Delete", key).await?;
        if !self
            .store
            .delete_keyed(table, caller.tenant.as_str(), key, self.clock.now())
            .await?
        {
            return Err(PolicyError::NotFound(format!("{key:?} not found")));
        }
        self.changed(&caller.tenant);
        Ok(())
    }
}
