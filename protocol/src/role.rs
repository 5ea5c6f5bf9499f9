//! The four roles a host can hold, as in ECE.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A role a host can be granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Runs the workloads; most hosts are allocators.
    Allocator,
    /// Runs `musterd`: issues tokens, signs certificates, keeps the registry.
    Coordinator,
    /// Routes user traffic to the workloads.
    Proxy,
    /// Home of the store (an etcd member and `musterd` in director mode).
    Director,
}

impl Role {
    pub const ALL: [Role; 4] = [
        Role::Allocator,
        Role::Coordinator,
        Role::Proxy,
        Role::Director,
    ];

    /// The roles the emergency token carries: everything but allocator, as in ECE.
    pub const EMERGENCY: [Role; 3] = [Role::Coordinator, Role::Director, Role::Proxy];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Allocator => "allocator",
            Role::Coordinator => "coordinator",
            Role::Proxy => "proxy",
            Role::Director => "director",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not one of the four.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?} (known roles: allocator, coordinator, proxy, director)")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "allocator" => Ok(Role::Allocator),
            "coordinator" => Ok(Role::Coordinator),
            "proxy" => Ok(Role::Proxy),
            "director" => Ok(Role::Director),
            _ => Err(UnknownRole(s.to_string())),
        }
    }
}

/// Parses a comma-separated role list (`allocator,proxy`), sorted and without repeats.
pub fn parse_role_list(s: &str) -> Result<Vec<Role>, UnknownRole> {
    let mut roles = s
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(Role::from_str)
        .collect::<Result<Vec<_>, _>>()?;
    normalize(&mut roles);
    Ok(roles)
}

/// Sorts and de-duplicates a role list in place.
pub fn normalize(roles: &mut Vec<Role>) {
    roles.sort();
    roles.dedup();
}

/// Joins roles as `a,b,c` (the form `MUSTER_ROLES` and the CLI use).
pub fn join(roles: &[Role]) -> String {
    roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists() {
        let cases: &[(&str, Result<Vec<Role>, UnknownRole>)] = &[
            ("allocator", Ok(vec![Role::Allocator])),
            (
                "proxy, allocator,proxy",
                Ok(vec![Role::Allocator, Role::Proxy]),
            ),
            ("", Ok(vec![])),
            ("Coordinator", Ok(vec![Role::Coordinator])),
            ("root", Err(UnknownRole("root".into()))),
        ];
        for (input, want) in cases {
            assert_eq!(&parse_role_list(input), want, "input {input:?}");
        }
    }

    #[test]
    fn serde_is_lowercase() {
        assert_eq!(
            serde_json::to_string(&Role::Director).ok().as_deref(),
            Some("\"director\"")
        );
        assert!(serde_json::from_str::<Role>("\"superuser\"").is_err());
    }
}
