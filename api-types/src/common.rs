//! Shapes every part of the API shares: pages of a list, the error body, and roles.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One page of a list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "{T}Page"))]
pub struct Page<T> {
    /// The items on this page.
    pub items: Vec<T>,
    /// Total number of matching items.
    pub total: i64,
    /// Page size used.
    pub limit: i64,
    /// Offset used.
    pub offset: i64,
}

/// Every error the admin API answers: `{"error": {"code": ..., "message": ...}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ErrorBody {
    /// The error itself.
    pub error: ErrorDetail,
}

/// The inside of [`ErrorBody`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ErrorDetail {
    /// Machine-readable code (`unauthorized`, `forbidden`, `invalid_request`, `not_found`, ...).
    pub code: String,
    /// What went wrong, for a person.
    pub message: String,
    /// The request field at fault, when one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// What a caller may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything.
    Admin,
    /// Read-only access to everything.
    Auditor,
    /// The revocation feed and usage reports only.
    Edge,
    /// Issue, refresh, revoke and introspect tokens of its own client only.
    Service,
}

impl Role {
    /// Every role, for exhaustive tests.
    pub const ALL: [Role; 4] = [Role::Admin, Role::Auditor, Role::Edge, Role::Service];

    /// The lowercase name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Auditor => "auditor",
            Role::Edge => "edge",
            Role::Service => "service",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "admin" => Ok(Role::Admin),
            "auditor" => Ok(Role::Auditor),
            "edge" => Ok(Role::Edge),
            "service" => Ok(Role::Service),
            other => Err(format!(
                "unknown role {other:?}, expected admin, auditor, edge or service"
            )),
        }
    }
}

/// `POST /api/v1/session`: a dashboard login.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

/// `POST /api/v1/session/password`: the logged-in user changes their own password.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    /// The password the user logs in with now.
    pub current_password: String,
    /// The new password, at least 12 characters.
    pub new_password: String,
}

/// What `POST` and `GET /api/v1/session` answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SessionInfo {
    /// Who is logged in.
    pub username: String,
    /// With which role.
    pub role: Role,
    /// The token to repeat in `x-csrf-token` on mutations (only in the answer to the login).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csrf_token: Option<String>,
    /// When the session ends (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}
