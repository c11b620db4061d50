//! The one decision of each request: (method, normalised path) → an [`Operation`]. The
//! authoriser, the embedded services and the forwarder all act on that value; nothing further
//! down compares paths again. A path under a policy's prefix that is none of its operations is
//! answered here (404 / 405), never handed on under a weaker check.

use http::{HeaderMap, Method};

use crate::config::{Config, Route as RouteConfig, Target};
use crate::rejection::Rejection;

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// Under `registration.path`.
    Registry(RegistryOp),
    /// `{session_store.path}/sessions`.
    Sessions(SessionOp),
    /// A `routes` entry (index into the configured routes): forwarded without a token check.
    Forward { route: usize },
    /// A `routes` entry with `token`: forwarded with a valid access token.
    Protected { route: usize },
}

impl Operation {
    /// A stable name, for the access log.
    pub fn name(&self) -> &'static str {
        match self {
            Operation::Registry(RegistryOp::Register) => "registry.register",
            Operation::Registry(RegistryOp::List) => "registry.list",
            Operation::Registry(RegistryOp::Read { .. }) => "registry.read",
            Operation::Registry(RegistryOp::Update { .. }) => "registry.update",
            Operation::Registry(RegistryOp::Delete { .. }) => "registry.delete",
            Operation::Sessions(SessionOp::Create) => "sessions.create",
            Operation::Sessions(SessionOp::Read) => "sessions.read",
            Operation::Sessions(SessionOp::Replace) => "sessions.replace",
            Operation::Sessions(SessionOp::Delete) => "sessions.delete",
            Operation::Forward { .. } => "forward",
            Operation::Protected { .. } => "protected",
        }
    }
}

/// The client registration endpoint (RFC 7591 / RFC 7592).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryOp {
    /// `POST {path}`.
    Register,
    /// `GET` / `HEAD {path}`: every client.
    List,
    /// `GET` / `HEAD {path}/{id}`.
    Read { id: String },
    /// `PUT {path}/{id}`.
    Update { id: String },
    /// `DELETE {path}/{id}`.
    Delete { id: String },
}

/// The session store (Connect2id session store API v2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionOp {
    /// `POST`.
    Create,
    /// `GET` / `HEAD`, by `SID` header or `?subject=`.
    Read,
    /// `PUT` with `SID`.
    Replace,
    /// `DELETE` by `SID`, `?subject=` or `?all=true`.
    Delete,
}

/// A session-store request as read once, before anything acts on it: its operation, its
/// `SID` header and its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRequest {
    pub op: SessionOp,
    pub sid: Sid,
    pub subject: Option<String>,
    /// `all=true` (delete every session).
    pub all: bool,
    /// `quiet=true`: a delete answers 204 without the deleted sessions.
    pub quiet: bool,
    /// `skip_last_used_update=true` (Connect2id 15.3): a read leaves the idle deadline as it
    /// was.
    pub skip_last_used_update: bool,
}

/// The request's `SID` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sid {
    Absent,
    /// 1 to 128 base64url characters (surrounding spaces trimmed).
    Given(String),
    /// Present, but not a session id: the embedded store refuses it; a provider behind gets
    /// it as it came.
    Malformed,
}

impl SessionRequest {
    /// Reads the parameters this API takes. A parameter or `SID` given twice is refused,
    /// since another reader of the same request (the provider behind) could take the other
    /// value; so is `all=true` beside a subject or an `SID`.
    pub fn read(
        op: SessionOp,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<Self, Rejection> {
        let mut sids = headers.get_all("sid").iter();
        let sid = match (sids.next(), sids.next()) {
            (None, _) => Sid::Absent,
            (Some(_), Some(_)) => {
                return Err(Rejection::InvalidRequest("More than one SID header"));
            }
            (Some(v), None) => match v.to_str().map(str::trim) {
                Ok(s) if valid_sid(s) => Sid::Given(s.to_string()),
                _ => Sid::Malformed,
            },
        };
        let mut request = SessionRequest {
            op,
            sid,
            subject: None,
            all: false,
            quiet: false,
            skip_last_used_update: false,
        };
        let (mut all, mut quiet, mut skip) = (false, false, false);
        for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            let (seen, flag) = match &*k {
                "subject" => {
                    if request.subject.replace(v.into_owned()).is_some() {
                        return Err(Rejection::InvalidInput(
                            "The subject parameter is given twice".into(),
                        ));
                    }
                    continue;
                }
                "all" => (&mut all, &mut request.all),
                "quiet" => (&mut quiet, &mut request.quiet),
                "skip_last_used_update" => (&mut skip, &mut request.skip_last_used_update),
                _ => continue,
            };
            if std::mem::replace(seen, true) {
                return Err(Rejection::InvalidInput(format!(
                    "The {k} parameter is given twice"
                )));
            }
            if !set_flag(flag, &v) {
                return Err(Rejection::InvalidInput(format!(
                    "The {k} parameter must be true or false"
                )));
            }
        }
        if request.all && (request.subject.is_some() || request.sid != Sid::Absent) {
            return Err(Rejection::InvalidInput(
                "all=true cannot be combined with subject or an SID header".into(),
            ));
        }
        Ok(request)
    }

    /// A delete whose answer is a bodiless 204 (`quiet=true`), also when a provider behind
    /// ignores the parameter.
    pub fn quiet_delete(&self) -> bool {
        self.op == SessionOp::Delete && self.quiet
    }
}

/// `true` / `false` into `flag`; false when the value is neither.
fn set_flag(flag: &mut bool, value: &str) -> bool {
    match value {
        "true" => *flag = true,
        "false" => *flag = false,
        _ => return false,
    }
    true
}

/// A session id as clients may send it: 1 to 128 base64url characters.
pub fn valid_sid(sid: &str) -> bool {
    (1..=128).contains(&sid.len())
        && sid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The credential an operation needs: the authoriser's whole policy table is this function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// A `routes` entry: none.
    None,
    /// An initial access token (JWT, RFC 7591 §3) or a master token.
    InitialAccessOrMaster,
    /// A master token only.
    Master,
    /// That client's registration access token (RFC 7592 §3, checked by the target) or a
    /// master token.
    RegistrationAccessOrMaster,
    /// A `session_store.api_tokens` entry.
    SessionStoreToken,
    /// An access token that satisfies the route's `token` policy.
    AccessToken { route: usize },
}

impl Operation {
    pub fn credential(&self) -> Credential {
        match self {
            Operation::Registry(RegistryOp::Register) => Credential::InitialAccessOrMaster,
            Operation::Registry(RegistryOp::List) => Credential::Master,
            Operation::Registry(
                RegistryOp::Read { .. } | RegistryOp::Update { .. } | RegistryOp::Delete { .. },
            ) => Credential::RegistrationAccessOrMaster,
            Operation::Sessions(_) => Credential::SessionStoreToken,
            Operation::Forward { .. } => Credential::None,
            Operation::Protected { route } => Credential::AccessToken { route: *route },
        }
    }
}

/// `Allow` of the registration collection, a client, the sessions resource (RFC 9110 §15.5.6).
pub const ALLOW_COLLECTION: &str = "GET, HEAD, POST";
pub const ALLOW_CLIENT: &str = "GET, HEAD, PUT, DELETE";
pub const ALLOW_SESSIONS: &str = "GET, HEAD, POST, PUT, DELETE";

struct Route {
    prefix: String,
    target: Target,
    label: String,
    protected: bool,
    /// `upgrade: true`: requests with `Upgrade` (WebSocket, h2c) are forwarded.
    upgrade: bool,
}

pub struct Router {
    registration_path: String,
    registration_target: Target,
    session_store_path: String,
    session_store_target: Target,
    routes: Vec<Route>,
}

impl Router {
    pub fn new(config: &Config) -> Self {
        Self::from_parts(
            (&config.registration.path, &config.registration.target),
            (&config.session_store.path, &config.session_store.target),
            &config.routes,
        )
    }

    /// A router from the registration and session-store (path, target) and the routes.
    pub fn from_parts(
        registration: (&str, &Target),
        session_store: (&str, &Target),
        routes: &[RouteConfig],
    ) -> Self {
        Router {
            registration_path: registration.0.to_string(),
            registration_target: registration.1.clone(),
            session_store_path: session_store.0.to_string(),
            session_store_target: session_store.1.clone(),
            routes: routes
                .iter()
                .map(|r| Route {
                    prefix: r.prefix.clone(),
                    target: Target::Upstream(r.upstream.clone()),
                    label: format!("route:{}", r.prefix),
                    protected: r.token.is_some(),
                    upgrade: r.upgrade,
                })
                .collect(),
        }
    }

    /// The operation `method` on the normalised `path` asks for: the registration path, the
    /// session-store path, then the routes in order (first match wins).
    pub fn route(&self, method: &Method, path: &str) -> Result<Operation, Rejection> {
        if let Some(rest) = below(path, &self.registration_path) {
            return registry(method, rest).map(Operation::Registry);
        }
        if let Some(rest) = below(path, &self.session_store_path) {
            return sessions(method, rest).map(Operation::Sessions);
        }
        self.routes
            .iter()
            .position(|r| path.starts_with(r.prefix.as_str()))
            .map(|route| {
                if self.routes[route].protected {
                    Operation::Protected { route }
                } else {
                    Operation::Forward { route }
                }
            })
            .ok_or(Rejection::NoRoute)
    }

    /// Whether a request with `Upgrade` may go on: only on a route that says `upgrade: true`
    /// (a tunnel would carry requests no policy saw), never on the policy paths.
    pub fn allows_upgrade(&self, op: &Operation) -> bool {
        match op {
            Operation::Registry(_) | Operation::Sessions(_) => false,
            Operation::Forward { route } | Operation::Protected { route } => {
                self.routes[*route].upgrade
            }
        }
    }

    /// Where the operation is served.
    pub fn target(&self, op: &Operation) -> &Target {
        match op {
            Operation::Registry(_) => &self.registration_target,
            Operation::Sessions(_) => &self.session_store_target,
            Operation::Forward { route } | Operation::Protected { route } => {
                &self.routes[*route].target
            }
        }
    }

    /// A dense number for each place an operation is served (0 registration, 1 session store,
    /// 2.. the routes): an index for per-route metric handles. [`Self::places`] of them.
    pub fn place(&self, op: &Operation) -> usize {
        match op {
            Operation::Registry(_) => 0,
            Operation::Sessions(_) => 1,
            Operation::Forward { route } | Operation::Protected { route } => 2 + route,
        }
    }

    /// How many places [`Self::place`] numbers.
    pub fn places(&self) -> usize {
        2 + self.routes.len()
    }

    /// The path template an operation matched (OpenTelemetry's `http.route`): the
    /// registration or session store path, or the route's prefix.
    pub fn template(&self, op: &Operation) -> &str {
        match op {
            Operation::Registry(_) => &self.registration_path,
            Operation::Sessions(_) => &self.session_store_path,
            Operation::Forward { route } | Operation::Protected { route } => {
                &self.routes[*route].prefix
            }
        }
    }

    /// A label for logs and metrics: `registration`, `session_store` or `route:<prefix>`.
    pub fn label(&self, op: &Operation) -> &str {
        match op {
            Operation::Registry(_) => "registration",
            Operation::Sessions(_) => "session_store",
            Operation::Forward { route } | Operation::Protected { route } => {
                &self.routes[*route].label
            }
        }
    }
}

/// What follows `base` in `path` when `path` is `base` or below it (`""`, `/abc`); None for
/// `/clientsfoo`.
fn below<'p>(path: &'p str, base: &str) -> Option<&'p str> {
    path.strip_prefix(base)
        .filter(|rest| rest.is_empty() || rest.starts_with('/'))
}

fn registry(method: &Method, rest: &str) -> Result<RegistryOp, Rejection> {
    if rest.is_empty() {
        return match *method {
            Method::POST => Ok(RegistryOp::Register),
            Method::GET | Method::HEAD => Ok(RegistryOp::List),
            _ => Err(Rejection::MethodNotAllowed {
                allow: ALLOW_COLLECTION,
            }),
        };
    }
    // `/{id}`: one non-empty segment. `/` (the trailing slash), `/{id}/` and deeper paths are
    // no resource of the registration endpoint.
    let id = rest
        .strip_prefix('/')
        .filter(|id| !id.is_empty() && !id.contains('/'))
        .ok_or(Rejection::NotFound("Resource"))?;
    let id = id.to_string();
    match *method {
        Method::GET | Method::HEAD => Ok(RegistryOp::Read { id }),
        Method::PUT => Ok(RegistryOp::Update { id }),
        Method::DELETE => Ok(RegistryOp::Delete { id }),
        _ => Err(Rejection::MethodNotAllowed {
            allow: ALLOW_CLIENT,
        }),
    }
}

fn sessions(method: &Method, rest: &str) -> Result<SessionOp, Rejection> {
    if rest != "/sessions" {
        return Err(Rejection::NotFound("Resource"));
    }
    match *method {
        Method::POST => Ok(SessionOp::Create),
        Method::GET | Method::HEAD => Ok(SessionOp::Read),
        Method::PUT => Ok(SessionOp::Replace),
        Method::DELETE => Ok(SessionOp::Delete),
        _ => Err(Rejection::MethodNotAllowed {
            allow: ALLOW_SESSIONS,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parameter_error_names_the_parameter_and_the_problem() {
        let read =
            |q: &str| match SessionRequest::read(SessionOp::Delete, Some(q), &HeaderMap::new()) {
                Err(Rejection::InvalidInput(why)) => why,
                other => panic!("{q}: {other:?}"),
            };
        assert_eq!(
            read("all=true&all=true"),
            "The all parameter is given twice"
        );
        assert_eq!(
            read("quiet=yes&all=true"),
            "The quiet parameter must be true or false"
        );
        assert_eq!(
            read("subject=a&subject=b"),
            "The subject parameter is given twice"
        );
        assert_eq!(
            read("skip_last_used_update=1"),
            "The skip_last_used_update parameter must be true or false"
        );
    }

    fn router() -> Router {
        Router::from_parts(
            ("/clients", &Target::Embedded),
            ("/session-store/rest/v2", &Target::Upstream("idp".into())),
            &[RouteConfig {
                prefix: "/".into(),
                upstream: "idp".into(),
                token: None,
                upgrade: false,
            }],
        )
    }

    fn op(method: Method, path: &str) -> Result<Operation, Rejection> {
        router().route(&method, path)
    }

    #[test]
    fn each_operation_needs_its_credential() {
        use Credential::*;
        let id = || "abc".to_string();
        let table = [
            (
                Operation::Registry(RegistryOp::Register),
                InitialAccessOrMaster,
            ),
            (Operation::Registry(RegistryOp::List), Master),
            (
                Operation::Registry(RegistryOp::Read { id: id() }),
                RegistrationAccessOrMaster,
            ),
            (
                Operation::Registry(RegistryOp::Update { id: id() }),
                RegistrationAccessOrMaster,
            ),
            (
                Operation::Registry(RegistryOp::Delete { id: id() }),
                RegistrationAccessOrMaster,
            ),
            (Operation::Sessions(SessionOp::Create), SessionStoreToken),
            (Operation::Sessions(SessionOp::Read), SessionStoreToken),
            (Operation::Sessions(SessionOp::Replace), SessionStoreToken),
            (Operation::Sessions(SessionOp::Delete), SessionStoreToken),
            (Operation::Forward { route: 0 }, None),
            (Operation::Protected { route: 0 }, AccessToken { route: 0 }),
        ];
        for (op, credential) in table {
            assert_eq!(op.credential(), credential, "{op:?}");
        }
    }

    #[test]
    fn registration_methods() {
        use RegistryOp::*;
        let reg = |m: Method, p: &str| {
            op(m, p).map(|o| match o {
                Operation::Registry(r) => r,
                other => panic!("{other:?}"),
            })
        };
        assert_eq!(reg(Method::POST, "/clients"), Ok(Register));
        assert_eq!(reg(Method::GET, "/clients"), Ok(List));
        // Servlet containers serve HEAD through GET: HEAD is the list, master token only.
        assert_eq!(reg(Method::HEAD, "/clients"), Ok(List));
        for m in [Method::PUT, Method::DELETE, Method::PATCH, Method::OPTIONS] {
            assert_eq!(
                reg(m, "/clients"),
                Err(Rejection::MethodNotAllowed {
                    allow: ALLOW_COLLECTION
                })
            );
        }
        let id = || "abc".to_string();
        assert_eq!(reg(Method::GET, "/clients/abc"), Ok(Read { id: id() }));
        assert_eq!(reg(Method::HEAD, "/clients/abc"), Ok(Read { id: id() }));
        assert_eq!(reg(Method::PUT, "/clients/abc"), Ok(Update { id: id() }));
        assert_eq!(reg(Method::DELETE, "/clients/abc"), Ok(Delete { id: id() }));
        assert_eq!(
            reg(Method::POST, "/clients/abc"),
            Err(Rejection::MethodNotAllowed {
                allow: ALLOW_CLIENT
            })
        );
        // The trailing slash and deeper paths are no resource: 404 whatever the method.
        for p in ["/clients/", "/clients/abc/", "/clients/abc/def"] {
            for m in [Method::POST, Method::GET, Method::DELETE] {
                assert_eq!(reg(m, p), Err(Rejection::NotFound("Resource")), "{p}");
            }
        }
    }

    #[test]
    fn session_store_and_routes() {
        let ss = "/session-store/rest/v2/sessions";
        assert_eq!(
            op(Method::DELETE, ss),
            Ok(Operation::Sessions(SessionOp::Delete))
        );
        assert_eq!(
            op(Method::HEAD, ss),
            Ok(Operation::Sessions(SessionOp::Read))
        );
        assert_eq!(
            op(Method::PATCH, ss),
            Err(Rejection::MethodNotAllowed {
                allow: ALLOW_SESSIONS
            })
        );
        for p in [
            "/session-store/rest/v2",
            "/session-store/rest/v2/",
            "/session-store/rest/v2/sessions/",
            "/session-store/rest/v2/sessions/x",
            "/session-store/rest/v2/other",
        ] {
            assert_eq!(
                op(Method::GET, p),
                Err(Rejection::NotFound("Resource")),
                "{p}"
            );
        }
        assert_eq!(
            op(Method::GET, "/clientsfoo"),
            Ok(Operation::Forward { route: 0 })
        );
        assert_eq!(
            op(Method::GET, "/session-store"),
            Ok(Operation::Forward { route: 0 })
        );
        let r = router();
        assert_eq!(r.label(&Operation::Forward { route: 0 }), "route:/");
        assert_eq!(
            r.target(&Operation::Sessions(SessionOp::Read)),
            &Target::Upstream("idp".into())
        );
    }
}
