//! OAuth 2.0 grant types (RFC 7591 §2 `grant_types` values) and the names Connect2id's
//! narrowed registration scopes give them (`client-reg:grant:<name>`).

/// The grants a narrowed registration scope can name, in Connect2id's words
/// (`client-reg:grant:<name>`), with the `grant_type` each permits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    AuthorizationCode,
    Implicit,
    RefreshToken,
    Password,
    ClientCredentials,
    DeviceCode,
    Ciba,
    JwtBearer,
    Saml2Bearer,
    TokenExchange,
}

const ALL: [Grant; 10] = [
    Grant::AuthorizationCode,
    Grant::Implicit,
    Grant::RefreshToken,
    Grant::Password,
    Grant::ClientCredentials,
    Grant::DeviceCode,
    Grant::Ciba,
    Grant::JwtBearer,
    Grant::Saml2Bearer,
    Grant::TokenExchange,
];

impl Grant {
    /// The name in a narrowed scope.
    pub fn scope_name(self) -> &'static str {
        match self {
            Grant::AuthorizationCode => "code",
            Grant::Implicit => "implicit",
            Grant::RefreshToken => "refresh_token",
            Grant::Password => "password",
            Grant::ClientCredentials => "client_credentials",
            Grant::DeviceCode => "device_code",
            Grant::Ciba => "ciba",
            Grant::JwtBearer => "jwt-bearer",
            Grant::Saml2Bearer => "saml2-bearer",
            Grant::TokenExchange => "token-exchange",
        }
    }

    /// The `grant_types` value (RFC 7591 §2 and the grants' own RFCs).
    pub fn grant_type(self) -> &'static str {
        match self {
            Grant::AuthorizationCode => "authorization_code",
            Grant::Implicit => "implicit",
            Grant::RefreshToken => "refresh_token",
            Grant::Password => "password",
            Grant::ClientCredentials => "client_credentials",
            Grant::DeviceCode => "urn:ietf:params:oauth:grant-type:device_code",
            Grant::Ciba => "urn:openid:params:grant-type:ciba",
            Grant::JwtBearer => "urn:ietf:params:oauth:grant-type:jwt-bearer",
            Grant::Saml2Bearer => "urn:ietf:params:oauth:grant-type:saml2-bearer",
            Grant::TokenExchange => "urn:ietf:params:oauth:grant-type:token-exchange",
        }
    }

    pub fn of_scope_name(name: &str) -> Option<Grant> {
        ALL.into_iter().find(|g| g.scope_name() == name)
    }

    pub fn of_grant_type(value: &str) -> Option<Grant> {
        ALL.into_iter().find(|g| g.grant_type() == value)
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// A set of grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Grants(u16);

impl Grants {
    pub fn contains(self, g: Grant) -> bool {
        self.0 & g.bit() != 0
    }

    pub fn insert(&mut self, g: Grant) {
        self.0 |= g.bit();
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Grant> {
        ALL.into_iter().filter(move |g| self.contains(*g))
    }

    /// The grants `client-reg:grant:<name>` scopes permit: each its own, and `code` also
    /// `refresh_token` (Connect2id: refresh tokens go with the code flow).
    pub fn permitted_by_scopes(names: impl IntoIterator<Item = Grant>) -> Grants {
        let mut out = Grants::default();
        for g in names {
            out.insert(g);
            if g == Grant::AuthorizationCode {
                out.insert(Grant::RefreshToken);
            }
        }
        out
    }

    /// The `grant_type` values, for storage and logs.
    pub fn grant_types(self) -> Vec<String> {
        self.iter().map(|g| g.grant_type().to_string()).collect()
    }

    pub fn of_grant_types<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Grants> {
        let mut out = Grants::default();
        for v in values {
            out.insert(Grant::of_grant_type(v)?);
        }
        Some(out)
    }
}
