//! Configuration: typed, from a TOML file plus environment variables for
//! secrets, validated once at start-up.
//!
//! Every key has a default (see `config/example.toml`). Unknown keys and bad
//! values stop start-up with a message naming the key and the file. With no
//! file at all the gateway runs in demo mode with published demo credentials;
//! a real config file must set its own SOAP password.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use std::{fmt, fs};

use ipnet::IpNet;
use serde::Deserialize;

/// Environment variables that override secrets from the file, so the file
/// itself can stay free of them.
pub const ENV_SOAP_USERNAME: &str = "CTI_SOAP_USERNAME";
pub const ENV_SOAP_PASSWORD: &str = "CTI_SOAP_PASSWORD";
pub const ENV_API_TOKEN: &str = "CTI_API_TOKEN";
pub const ENV_ONEC_USERNAME: &str = "CTI_ONEC_USERNAME";
pub const ENV_ONEC_PASSWORD: &str = "CTI_ONEC_PASSWORD";
/// The 1C writer's own user (`[sync.onec] write_username`/`write_password`).
pub const ENV_ONEC_WRITE_USERNAME: &str = "CTI_ONEC_WRITE_USERNAME";
pub const ENV_ONEC_WRITE_PASSWORD: &str = "CTI_ONEC_WRITE_PASSWORD";

/// Demo-mode values: printed at start, never used when a config file is given.
pub const DEMO_SOAP_USERNAME: &str = "SOAP";
pub const DEMO_SOAP_PASSWORD: &str = "123";
pub const DEMO_API_TOKEN: &str = "demo-api-token";
pub const DEMO_OPERATOR_KEY: &str = "gW3cyUJAtl50PhF";
pub const DEMO_OPERATOR_TOKEN: &str = "demo-operator-token";
/// The demo directory, compiled into the binary so that demo mode works from
/// any folder: written to the demo folder (see [`demo_folder`]) on first start.
pub const DEMO_COUNTERPARTIES: &[u8] = include_bytes!("../data/demo/counterparties.jsonl");
/// The demo directory's file name inside the demo folder.
pub const DEMO_DIRECTORY_FILE: &str = "counterparties.jsonl";
/// Where demo mode keeps its files instead of the default folder (environment).
pub const ENV_DEMO_DIR: &str = "CTI_DEMO_DIR";

/// Secret values anyone can read: demo mode's and the examples of
/// `config/example.toml`. On a listener other machines reach, a secret
/// equal to one of them stops start-up (see [`Config::check_secrets`]).
pub const PUBLISHED_SECRETS: &[&str] = &[
    DEMO_SOAP_PASSWORD,
    DEMO_API_TOKEN,
    DEMO_OPERATOR_TOKEN,
    "change-me",
    "change-me-too",
    "operator-token-1",
];

/// The shortest secret accepted on a listener other machines reach.
pub const MIN_SECRET_CHARS: usize = 16;

/// The folder demo mode keeps its directory file and store in, never the
/// current directory: `CTI_DEMO_DIR`, else `$XDG_STATE_HOME/cti-gateway/demo`,
/// else `~/.local/state/cti-gateway/demo`, else one under the temporary folder.
pub fn demo_folder(env: EnvLookup<'_>) -> PathBuf {
    if let Some(dir) = env(ENV_DEMO_DIR) {
        return PathBuf::from(dir);
    }
    let state = env("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|home| Path::new(&home).join(".local/state")));
    match state {
        Some(state) => state.join("cti-gateway").join("demo"),
        None => std::env::temp_dir().join("cti-gateway-demo"),
    }
}

/// Whether `filter` is a tracing filter whose every directive names a level:
/// a bare level (`warn`) or `target=level`. `EnvFilter` itself takes a bare
/// word as a target enabled at every level, so `warning` or `verbose` would
/// pass it and turn off every line but that target's. Span directives
/// (`target[span]=level`) are left to `EnvFilter`.
pub fn is_log_filter(filter: &str) -> bool {
    use std::str::FromStr as _;
    use tracing_subscriber::filter::LevelFilter;
    if tracing_subscriber::EnvFilter::try_new(filter).is_err() {
        return false;
    }
    let is_level =
        |word: &str| LevelFilter::from_str(word.trim()).is_ok() && !word.trim().is_empty();
    filter
        .split(',')
        .map(str::trim)
        .filter(|directive| !directive.is_empty())
        .all(|directive| match directive.rsplit_once('=') {
            Some((_, level)) => is_level(level),
            None => is_level(directive),
        })
}

/// The `log.format` a config file asks for, read as far as it can be even
/// when the file does not load: a fatal error about the file is then still
/// written in the format the admin's log collector expects.
pub fn peek_log_format(path: &Path) -> Option<LogFormat> {
    let text = fs::read_to_string(path).ok()?;
    let table: toml::Table = toml::from_str(&text).ok()?;
    match table.get("log")?.get("format")?.as_str()? {
        "json" => Some(LogFormat::Json),
        "text" => Some(LogFormat::Text),
        _ => None,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: `{key}` {problem}")]
    Invalid {
        path: PathBuf,
        key: String,
        problem: String,
    },
}

/// A secret value: shown as `***` by `Debug`, so it never reaches a log line.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A list of IP networks, as `allow_from` and `server.trusted_proxies` take
/// them: CIDRs (`203.0.113.0/24`, `2001:db8::/32`) or bare addresses (a /32
/// or a /128). An entry that is not one (a host name, a typo) is kept by its
/// text, so that validation names it; [`AddressList::contains`] never
/// matches anything for a list holding one (see [`AddressList::is_valid`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "Vec<String>")]
pub struct AddressList {
    nets: Vec<IpNet>,
    bad: Vec<String>,
}

impl From<Vec<String>> for AddressList {
    fn from(entries: Vec<String>) -> AddressList {
        AddressList::parse(entries)
    }
}

impl AddressList {
    /// Reads each entry: a network in CIDR notation (host bits dropped) or
    /// a bare address.
    pub fn parse<S: AsRef<str>>(entries: impl IntoIterator<Item = S>) -> AddressList {
        let mut list = AddressList::default();
        for entry in entries {
            let text = entry.as_ref().trim();
            let net = text
                .parse::<IpNet>()
                .map(|net| net.trunc())
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from));
            match net {
                Ok(net) => list.nets.push(net),
                Err(_) => list.bad.push(entry.as_ref().to_owned()),
            }
        }
        list
    }

    /// No entry at all: for an allow-list, everyone.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty() && self.bad.is_empty()
    }

    /// Every entry is an address or a network.
    pub fn is_valid(&self) -> bool {
        self.bad.is_empty()
    }

    /// The first entry that is neither an address nor a network.
    pub fn first_bad(&self) -> Option<&str> {
        self.bad.first().map(String::as_str)
    }

    /// Whether `ip` lies in one of the networks (an IPv4 address mapped
    /// into IPv6, as a dual-stack listener sees it, counts as the IPv4
    /// address). Never for a list with a bad entry.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.is_valid() && self.nets.iter().any(|net| net.contains(&ip))
    }
}

/// Web origins as `popup.allowed_origins` takes them: `https://crm.example.ru`,
/// `http://10.0.0.5:8080` (scheme `http` or `https`, a host, an optional
/// port; no path). Kept in the form browsers send in `Origin` (lower case,
/// no default port; see [`normalize_origin`]), so a check is a comparison
/// of strings. An entry that is not one is kept by its text, so that
/// validation names it; [`OriginList::contains`] never matches anything for
/// a list holding one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "Vec<String>")]
pub struct OriginList {
    origins: Vec<String>,
    bad: Vec<String>,
}

impl From<Vec<String>> for OriginList {
    fn from(entries: Vec<String>) -> OriginList {
        let mut list = OriginList::default();
        for entry in entries {
            match normalize_origin(&entry) {
                Some(origin) => list.origins.push(origin),
                None => list.bad.push(entry),
            }
        }
        list
    }
}

impl OriginList {
    /// No entry at all: no check.
    pub fn is_empty(&self) -> bool {
        self.origins.is_empty() && self.bad.is_empty()
    }

    /// The first entry that is not a web origin.
    pub fn first_bad(&self) -> Option<&str> {
        self.bad.first().map(String::as_str)
    }

    /// Whether `origin` (normalized) is one of the list's. Never for a list
    /// with a bad entry.
    pub fn contains(&self, origin: &str) -> bool {
        self.bad.is_empty() && self.origins.iter().any(|o| o == origin)
    }
}

/// `text` as a browser writes an `Origin` header: `scheme://host[:port]`
/// with the scheme and host in lower case and the scheme's default port
/// left out; `None` for anything else (another scheme, a path, user
/// information, a wildcard, `null`). A trailing `/` is forgiven.
pub fn normalize_origin(text: &str) -> Option<String> {
    let (scheme, rest) = text.trim().split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port: u16 = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = match authority.strip_prefix('[') {
        // An IPv6 literal: `[2001:db8::1]:8443`.
        Some(bracketed) => {
            let (address, tail) = bracketed.split_once(']')?;
            let address: std::net::Ipv6Addr = address.parse().ok()?;
            let port = match tail {
                "" => None,
                tail => Some(tail.strip_prefix(':')?),
            };
            (format!("[{address}]"), port)
        }
        None => {
            let (host, port) = match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            };
            let host_ok = !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if !host_ok {
                return None;
            }
            (host.to_ascii_lowercase(), port)
        }
    };
    let port = match port {
        None => None,
        Some(digits) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
            Some(digits.parse::<u16>().ok()?)
        }
        Some(_) => return None,
    };
    Some(match port {
        Some(port) if port != default_port => format!("{scheme}://{host}:{port}"),
        _ => format!("{scheme}://{host}"),
    })
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub soap: SoapConfig,
    pub directory: DirectoryConfig,
    pub onec: Option<OnecConfig>,
    /// `[payments]`: payments from 1C (OData poll) or pushed, as events to
    /// the sync modules that take them.
    pub payments: Option<PaymentsConfig>,
    /// SERVIO PUMP's exchange files (`sources::servio`, docs/servio.md).
    pub servio: Option<ServioConfig>,
    pub store: StoreConfig,
    pub api: ApiConfig,
    pub popup: PopupConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    #[serde(rename = "operator")]
    pub operators: Vec<OperatorConfig>,
    pub sync: SyncConfig,
    /// Who answers for counterparties in each system: the extension and
    /// name a CRM's (or 1C's) responsible user stands for.
    #[serde(rename = "manager")]
    pub managers: Vec<ManagerConfig>,
    /// Where this configuration came from; `None` in demo mode.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Connections served at once; more are closed as soon as accepted.
    pub max_connections: usize,
    /// Connections one client address (the TCP peer; an IPv6 client's /64)
    /// may hold open at once; more from it are closed as soon as accepted.
    /// `trusted_proxies` and `soap.allow_from` are exempt.
    pub max_connections_per_address: usize,
    /// The last of `max_connections` that only `soap.allow_from` (the PBX)
    /// and `trusted_proxies` may take; only when `soap.allow_from` is set.
    pub reserved_connections: usize,
    /// Longest a new connection may take to deliver its first whole request
    /// head, the TLS handshake included; then it is closed.
    #[serde(with = "humantime_serde")]
    pub first_request_timeout: Duration,
    /// Longest wait for a request's headers, and for the next request on an
    /// idle keep-alive connection; a slower client is disconnected.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Longest wait for a request body to arrive in full.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// On SIGTERM, how long requests in flight may take to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Failed credential checks from one client address within a minute
    /// past which that address is blocked (429) for `auth_block`.
    pub auth_failures_per_minute: u32,
    /// How long an address over `auth_failures_per_minute` is blocked.
    #[serde(with = "humantime_serde")]
    pub auth_block: Duration,
    /// PEM file of the listener's certificate (then its chain); with
    /// `tls_key`, the listener speaks HTTPS only.
    pub tls_cert: Option<PathBuf>,
    /// PEM file of that certificate's private key.
    pub tls_key: Option<PathBuf>,
    /// Reverse proxies whose `Forwarded` / `X-Forwarded-For` /
    /// `X-Forwarded-Proto` headers are believed; from anyone else they are
    /// ignored.
    pub trusted_proxies: AddressList,
    /// Host names (with an optional port) the gateway is reached by: a
    /// request's `Host` naming one of them may be written into the WSDL
    /// (without `soap.public_url`).
    pub names: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SoapConfig {
    pub path: String,
    pub username: String,
    pub password: Option<Secret>,
    /// Whether `GET {path}?wsdl` needs the same Basic credentials.
    pub wsdl_requires_auth: bool,
    /// The service address written into the WSDL; by default it is built
    /// from the request's `Host` header.
    pub public_url: Option<String>,
    /// Client addresses that may reach `path` (the PBX's); empty: everyone.
    pub allow_from: AddressList,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DirectoryConfig {
    /// JSON Lines file of counterparties; optional when `[onec]` is set.
    pub file: Option<PathBuf>,
    /// How often the file is checked for changes ("0s" turns watching off;
    /// SIGHUP still reloads).
    #[serde(with = "humantime_serde")]
    pub watch_interval: Duration,
    /// How long a changed file must stay the same (size, modification time
    /// and inode, checked twice this far apart) before it is read: an export
    /// still being written is never taken. "0s": taken at once.
    #[serde(with = "humantime_serde")]
    pub settle: Duration,
    /// The largest share of the file source's records one new version of
    /// the file may remove (a fraction, 0 < x <= 1; 1 turns the guard off).
    /// A file over it is refused until `cti-gateway accept-file`.
    pub max_shrink: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnecConfig {
    pub odata_url: String,
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub password: Option<Secret>,
    #[serde(default = "OnecConfig::default_refresh", with = "humantime_serde")]
    pub refresh: Duration,
    #[serde(default = "OnecConfig::default_lookup_budget_ms")]
    pub lookup_budget_ms: u64,
    /// The counterparties catalog's entity set.
    #[serde(default = "OnecConfig::default_counterparties")]
    pub counterparties: String,
    /// Where contact information is read: its tabular section's entity set
    /// (`contacts_layout = "section"`), or the information register
    /// (`"register"`). Unset: the layout's usual name, see
    /// [`OnecConfig::contacts_set`].
    #[serde(default)]
    pub contacts: Option<String>,
    /// How the configuration keeps contact information: `section` (the
    /// catalog's tabular section, БП 3.0, УТ 11, КА 2) or `register`
    /// (`InformationRegister_КонтактнаяИнформация`, КА 1.1 and УПП).
    #[serde(default)]
    pub contacts_layout: ContactsLayout,
    /// The catalog field holding the client category (a number); empty: not read.
    #[serde(default)]
    pub category_field: String,
    /// The catalog field holding the responsible manager's extension; empty: not read.
    #[serde(default)]
    pub manager_phone_field: String,
    /// The catalog field holding the OGRN or a sole proprietor's OGRNIP
    /// (told apart by length); empty: not read.
    #[serde(default)]
    pub ogrn_field: String,
    /// The catalog field holding the record's code (usually `Code`); empty: not read.
    #[serde(default)]
    pub code_field: String,
    /// The catalog field telling a legal entity from a person (`ЮрФизЛицо`);
    /// empty: not read, the kind follows the INN.
    #[serde(default)]
    pub kind_field: String,
    /// The catalog field holding the responsible user, a reference
    /// (`_Key`) to `Catalog_Пользователи`, mapped to an extension through
    /// `[[manager]] onec_user`; empty: not read.
    #[serde(default)]
    pub manager_ref_field: String,
    /// The catalog field holding the director's name (text), written to
    /// the sync store's requisites; empty: not read.
    #[serde(default)]
    pub director_field: String,
    /// The `Вид_Key` (GUID) of the contact information kind "Юридический
    /// адрес" (in the register layout, the dimension `Вид`), written to the
    /// sync store's requisites as the legal address; empty: not read.
    #[serde(default)]
    pub legal_address_kind: String,
    /// The same for "Фактический адрес", the actual address.
    #[serde(default)]
    pub actual_address_kind: String,
    /// The bank accounts catalog (`Catalog_БанковскиеСчета`), read for the
    /// sync store's requisites; empty: not read.
    #[serde(default)]
    pub bank_accounts: String,
    /// The banks catalog the accounts refer to (`Catalog_Банки`; newer БП
    /// 3.0 releases call it `Catalog_КлассификаторБанков`).
    #[serde(default = "OnecConfig::default_banks")]
    pub banks: String,
    /// Field names of a bank account row.
    #[serde(default)]
    pub bank_account_fields: BankAccountFields,
    /// Field names of a bank row.
    #[serde(default)]
    pub bank_fields: BankFields,
    /// Rows asked for per request (`$top`) in a full read.
    #[serde(default = "OnecConfig::default_page_size")]
    pub page_size: usize,
    /// Longest one request to 1C may take (connect, answer and body).
    #[serde(default = "OnecConfig::default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// How long a number 1C does not know is remembered as unknown.
    #[serde(default = "OnecConfig::default_negative_ttl", with = "humantime_serde")]
    pub negative_ttl: Duration,
}

/// `[onec.bank_account_fields]`: the fields of a `Catalog_БанковскиеСчета`
/// row. `docs/external-systems.md` does not list them: the defaults are the
/// names БП 3.0 and УТ 11 publish, configurable for other configurations.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BankAccountFields {
    /// The counterparty owning the account (`Owner`; a composite reference
    /// in БП 3.0, whose GUID is this field; `Owner_Key` where the catalog
    /// has one owner type).
    pub owner: String,
    /// The account number (`НомерСчета`).
    pub number: String,
    /// The reference to the bank (`Банк_Key`).
    pub bank: String,
}

impl Default for BankAccountFields {
    fn default() -> Self {
        BankAccountFields {
            owner: "Owner".into(),
            number: "НомерСчета".into(),
            bank: "Банк_Key".into(),
        }
    }
}

/// `[onec.bank_fields]`: the fields of a `Catalog_Банки` row (defaults as
/// БП 3.0 publishes them; not in `docs/external-systems.md`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BankFields {
    /// The BIK (the catalog's `Code`).
    pub bik: String,
    /// The bank's name (`Description`).
    pub name: String,
    /// The bank's correspondent account (`КоррСчет`).
    pub corr_account: String,
}

impl Default for BankFields {
    fn default() -> Self {
        BankFields {
            bik: "Code".into(),
            name: "Description".into(),
            corr_account: "КоррСчет".into(),
        }
    }
}

/// Where a 1C configuration keeps counterparties' contact information.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContactsLayout {
    /// The catalog's tabular section `КонтактнаяИнформация`, rows with
    /// `LineNumber`, `НомерТелефона`, `АдресЭП`.
    #[default]
    Section,
    /// The information register `КонтактнаяИнформация`: owner in `Объект`,
    /// the number only in `Представление`.
    Register,
}

impl OnecConfig {
    fn default_refresh() -> Duration {
        Duration::from_secs(300)
    }
    fn default_lookup_budget_ms() -> u64 {
        300
    }
    fn default_counterparties() -> String {
        "Catalog_Контрагенты".into()
    }
    /// The entity set contact information is read from.
    pub fn contacts_set(&self) -> String {
        match (&self.contacts, self.contacts_layout) {
            (Some(set), _) => set.clone(),
            (None, ContactsLayout::Section) => "Catalog_Контрагенты_КонтактнаяИнформация".into(),
            (None, ContactsLayout::Register) => "InformationRegister_КонтактнаяИнформация".into(),
        }
    }
    fn default_banks() -> String {
        "Catalog_Банки".into()
    }
    fn default_page_size() -> usize {
        1000
    }
    fn default_timeout() -> Duration {
        Duration::from_secs(30)
    }
    fn default_negative_ttl() -> Duration {
        Duration::from_secs(60)
    }

    /// The live-lookup budget as a duration.
    pub fn lookup_budget(&self) -> Duration {
        Duration::from_millis(self.lookup_budget_ms)
    }
}

/// Where payments come from (`[payments] source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PaymentsSource {
    /// Read from 1C's OData interface every `poll`, with `[onec]`'s read user.
    Odata,
    /// Pushed to `POST /api/v1/exchange/payments` (Bearer `api.token`).
    Push,
}

impl PaymentsSource {
    /// As configured and as the events' `source` says: `odata`, `push`.
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentsSource::Odata => "odata",
            PaymentsSource::Push => "push",
        }
    }
}

/// `[payments]`: incoming payments (`payment.posted|changed|reversed`
/// events) from 1C's OData interface or pushed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentsConfig {
    pub source: PaymentsSource,
    /// How often 1C is read (`source = "odata"`); also on a reload.
    #[serde(default = "PaymentsConfig::default_poll", with = "humantime_serde")]
    pub poll: Duration,
    /// How far before the cursor's date each poll reads again, to see
    /// documents changed, unposted or deleted after they were handed on.
    #[serde(default = "PaymentsConfig::default_reread", with = "humantime_serde")]
    pub reread: Duration,
    /// Documents asked for per request (`$top`).
    #[serde(default = "PaymentsConfig::default_page_size")]
    pub page_size: usize,
    /// The UTC offset of 1C's dates (1C writes local time without one),
    /// added to a document's `Date` to make the event's RFC 3339 `date`.
    #[serde(default = "PaymentsConfig::default_utc_offset")]
    pub utc_offset: String,
    /// 1C's names of the document, its tabular section and their fields.
    #[serde(default)]
    pub fields: PaymentFields,
}

impl PaymentsConfig {
    fn default_poll() -> Duration {
        Duration::from_secs(300)
    }
    fn default_reread() -> Duration {
        Duration::from_secs(3 * 24 * 3600)
    }
    fn default_page_size() -> usize {
        1000
    }
    fn default_utc_offset() -> String {
        "+03:00".into()
    }
}

/// `[payments.fields]`: names as 1C publishes them in OData. The defaults
/// are Бухгалтерия предприятия 3.0's (see README, "Payments").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PaymentFields {
    /// The entity set of incoming bank payments.
    pub document: String,
    /// The tabular section (embedded in each document) of payment rows.
    pub section: String,
    pub number: String,
    pub date: String,
    pub amount: String,
    /// The payer, a reference (`_Key`) to the counterparties catalog.
    pub counterparty: String,
    /// A row's amount.
    pub row_amount: String,
    /// A row's invoice (`_Key`); empty: not read.
    pub row_invoice: String,
    /// A row's contract (`_Key`); empty: not read.
    pub row_contract: String,
}

impl Default for PaymentFields {
    fn default() -> Self {
        PaymentFields {
            document: "Document_ПоступлениеНаРасчетныйСчет".into(),
            section: "РасшифровкаПлатежа".into(),
            number: "Number".into(),
            date: "Date".into(),
            amount: "СуммаДокумента".into(),
            counterparty: "Контрагент_Key".into(),
            row_amount: "СуммаПлатежа".into(),
            row_invoice: "СчетНаОплату_Key".into(),
            row_contract: "ДоговорКонтрагента_Key".into(),
        }
    }
}

/// True when `text` is a GUID as 1C writes its keys (8-4-4-4-12 hex digits).
fn is_guid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A `server.names` entry: a host (a DNS name, an IPv4 address or a
/// bracketed IPv6 one) with an optional port, nothing else (no scheme,
/// user or path).
fn check_host_name(entry: &str) -> Result<(), &'static str> {
    let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
        let (v6, after) = rest
            .split_once(']')
            .ok_or("is not a host name (an IPv6 address without its closing bracket)")?;
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("is not a host name (not an IPv6 address in the brackets)");
        }
        match after.strip_prefix(':') {
            Some(port) => (v6, Some(port)),
            None if after.is_empty() => (v6, None),
            None => return Err("is not a host name with an optional port"),
        }
    } else {
        match entry.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (entry, None),
        }
    };
    if host.is_empty() {
        return Err("is empty");
    }
    if !entry.starts_with('[')
        && !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
    {
        return Err("is not a host name (letters, digits, '-' and '.' only; an IPv6 address goes in brackets; no scheme, user or path)");
    }
    if port.is_some_and(|p| p.parse::<u16>().is_err()) {
        return Err("is not a host name with an optional port (a number up to 65535)");
    }
    Ok(())
}

/// An OData name (entity set or field): letters (Cyrillic included), digits
/// and `_`, so a configured name can never change the shape of a URL.
fn is_odata_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 128 && name.chars().all(|c| c.is_alphanumeric() || c == '_')
}

/// `[servio]`: the folder SERVIO PUMP exports its clients to, and how the
/// files are taken. See docs/servio.md.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServioConfig {
    /// Where SERVIO writes its export files. A missing or unreadable folder
    /// fails the source (in `/readyz`), not the start.
    pub import_dir: PathBuf,
    /// Where applied files go (`<UTC time>-<name>`); created if missing.
    pub archive_dir: PathBuf,
    /// Where refused files go, each with `<name>.error.txt`; created if missing.
    pub error_dir: PathBuf,
    /// The mapping file (see config/servio-mapping.example.toml).
    pub mapping: PathBuf,
    /// How often `import_dir` is scanned; "0s": only on SIGHUP (or
    /// `Gateway::reload`). At least 1s otherwise.
    #[serde(default = "servio_poll", with = "humantime_serde")]
    pub poll: Duration,
    /// A file is taken once its size and modification time held over two
    /// scans this far apart (or its ready marker exists).
    #[serde(default = "servio_settle", with = "humantime_serde")]
    pub settle: Duration,
    /// A file that says another is complete, `{name}` standing for that
    /// file's name (e.g. `"{name}.ok"`): with it, a file is taken as soon
    /// as its marker exists, and not before.
    #[serde(default)]
    pub ready_marker: Option<String>,
    /// What happens to a file once taken: moved to `archive_dir` / `error_dir`,
    /// or left where it is (a folder 1C reads too, maybe read-only; a copy
    /// goes to `archive_dir`).
    #[serde(default)]
    pub take: ServioTake,
    /// The most clients one file may hold.
    #[serde(default = "servio_max_records")]
    pub max_records: usize,
    /// A SERVIO client without a mapped manager is routed to the manager of
    /// another source's record with the same INN, chosen when the call is
    /// answered (`directory::ManagerRules`).
    #[serde(default = "yes")]
    pub manager_from_inn: bool,
    /// The manager of SERVIO clients that have none otherwise, likewise
    /// chosen when the call is answered, never written into their records.
    #[serde(default)]
    pub default_manager_phone: Option<String>,
}

/// `servio.take`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServioTake {
    #[default]
    Move,
    Leave,
}

fn servio_poll() -> Duration {
    Duration::from_secs(30)
}

fn servio_settle() -> Duration {
    Duration::from_secs(2)
}

fn servio_max_records() -> usize {
    1_000_000
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub path: PathBuf,
    /// Begin with an empty store where the files show a store was there
    /// (`cti-gateway serve --new-store`); never read from the file: it is
    /// for one start, not a setting.
    #[serde(skip)]
    pub new_store: bool,
    /// Call journal rows older than this are deleted, in small batches at
    /// the lowest priority; zero (`"0"`) keeps them forever.
    #[serde(with = "humantime_serde")]
    pub journal_retention: Duration,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Bearer token of the push API; the API answers 401 to everyone when unset.
    pub token: Option<Secret>,
    /// Client addresses that may reach `/api/`; empty: everyone.
    pub allow_from: AddressList,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Client addresses that may read `/metrics`; empty: everyone.
    pub allow_from: AddressList,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PopupConfig {
    /// Messages kept per operator key for screens that reconnect.
    pub replay_len: usize,
    /// How long a message stays replayable.
    #[serde(with = "humantime_serde")]
    pub replay_age: Duration,
    /// Messages queued for one screen before it counts as not reading and is cut off.
    pub queue_len: usize,
    /// How often WebSocket screens are pinged; a screen from which nothing
    /// has come for two intervals is dropped.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// Longest a long-poll request waits for a message (its `wait=` is
    /// clamped to this); at most 60 s, as the contract says.
    #[serde(with = "humantime_serde")]
    pub long_poll_max_wait: Duration,
    /// Client addresses that may reach the operator page, WebSocket and
    /// long-poll; empty: everyone.
    pub allow_from: AddressList,
    /// Web origins whose pages may open the WebSocket and the long-poll
    /// (`Origin` header); empty: no check. A request without `Origin` (1C,
    /// programs) and the gateway's own page are always let through.
    pub allowed_origins: OriginList,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter: `info`, `warn`, `cti_gateway=debug`... `RUST_LOG` wins when set.
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorConfig {
    /// The abonent key the PBX sends in IncomingCall/Key.
    pub key: String,
    /// What the operator's screen presents when it connects.
    pub token: Secret,
    #[serde(default)]
    pub name: String,
}

/// The CRM systems this product syncs with, whose modules come with their
/// own issues: a `[sync.<system>]` of one of these names that no module of
/// this build claims keeps the sync store (its admin API, the CRMs'
/// overlays) and is named in a warning, where any other unclaimed name
/// stops start-up ([`Config::check_sync_tables`]).
pub const SYNC_SYSTEMS: &[&str] = &["bitrix24", "amocrm", "bpium", "onec"];

/// The names `[sync] manager_precedence` may hold: the sources that name a
/// record's own manager (`onec`, `push`, `file`) and the CRM systems.
pub const MANAGER_SOURCES: &[&str] = &["onec", "push", "file", "bitrix24", "amocrm", "bpium"];

/// `[sync]`: what the CRM systems share, and one table per system.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// Whose manager answers when a record has several (its own, named by
    /// its source or `manager_source`, and those a CRM's overlay adds):
    /// the first listed; a system not listed ranks after every listed one.
    pub manager_precedence: Vec<String>,
    /// `[sync.<system>]`, by name: [`SYNC_SYSTEMS`] and any system a build
    /// registers (a test's, a bench's). A name that is neither stops
    /// start-up (the gateway knows what is registered); a key that is not a
    /// table is refused here, as not a system's table.
    tables: std::collections::BTreeMap<String, SyncSystemConfig>,
    /// `[sync] max_pending`: once this many rows wait in a system's
    /// inbox (or outbox), its webhooks answer 503, nothing acknowledged
    /// (the remote sends again or the reconcile catches up).
    pub max_pending: u64,
    /// `[sync.onec]`'s own keys (the 1C writer's), beside the runtime keys
    /// every system's table has (those are in `tables`).
    pub onec: OnecSyncConfig,
}

/// `[sync] max_pending` unless set: per system.
pub const DEFAULT_MAX_PENDING: u64 = 100_000;

/// By hand rather than `#[serde(flatten)]`: each table is read straight
/// from the TOML, so that an error points at its line and key (flatten
/// buffers the values and loses both).
impl<'de> Deserialize<'de> for SyncConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Tables;
        impl<'de> serde::de::Visitor<'de> for Tables {
            type Value = SyncConfig;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("[sync]: manager_precedence, max_pending and a [sync.<system>] table per system")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<SyncConfig, A::Error> {
                let mut config = SyncConfig::default();
                while let Some(key) = map.next_key::<String>()? {
                    if key == "manager_precedence" {
                        config.manager_precedence = map.next_value()?;
                    } else if key == "max_pending" {
                        config.max_pending = map.next_value()?;
                    } else if key == ONEC_SYSTEM {
                        // The runtime keys and the writer's own, split.
                        let (table, onec) = OnecSyncConfig::split(map.next_value()?)
                            .map_err(<A::Error as serde::de::Error>::custom)?;
                        config.onec = onec;
                        config.tables.insert(key, table);
                    } else {
                        let table: SyncSystemConfig = map.next_value()?;
                        config.tables.insert(key, table);
                    }
                }
                Ok(config)
            }
        }
        deserializer.deserialize_map(Tables)
    }
}

impl SyncConfig {
    /// Whether any system has a `[sync.<system>]` section: the sync store
    /// is then kept (its admin API, the CRMs' overlays) even before a
    /// module of that system runs.
    pub fn configured(&self) -> bool {
        !self.tables.is_empty()
    }
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            manager_precedence: MANAGER_SOURCES.iter().map(|s| (*s).to_owned()).collect(),
            tables: std::collections::BTreeMap::new(),
            max_pending: DEFAULT_MAX_PENDING,
            onec: OnecSyncConfig::default(),
        }
    }
}

impl SyncConfig {
    /// Each configured system with its table, by name.
    pub fn systems(&self) -> impl Iterator<Item = (&str, &SyncSystemConfig)> {
        self.tables
            .iter()
            .map(|(name, table)| (name.as_str(), table))
    }

    /// The table of `system`, if configured.
    pub fn system(&self, system: &str) -> Option<&SyncSystemConfig> {
        self.tables.get(system)
    }

    /// Sets `[sync.<system>]` (tests and benches that build a config).
    pub fn set_system(&mut self, system: &str, table: SyncSystemConfig) {
        self.tables.insert(system.to_owned(), table);
    }
}

/// A system's name: 1-64 lowercase Latin letters, digits, `_` and `-`, as
/// the directory's model takes it (config imports nothing of the crate, so
/// the rule is written here too).
fn is_system_name(text: &str) -> bool {
    (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// `[sync.<system>]`: one CRM system.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncSystemConfig {
    /// What makes a record there "the same client" as one here.
    pub dedupe_key: DedupeKey,
    /// The URL of a record's page there, by kind (`company`, `contact`...):
    /// `http(s)://`, with `{id}` where the record's id goes (URL-encoded).
    pub link_templates: std::collections::BTreeMap<String, String>,
    /// The limiter's overrides of the system's published limit: a token
    /// bucket of `burst` requests refilled at `per_second` (either alone
    /// takes the other from the published limit; a burst of 1 is requests
    /// `1/per_second` apart; `per_second` alone on a published window keeps
    /// the window)...
    pub burst: Option<u32>,
    pub per_second: Option<f64>,
    /// ...or at most `per_window` requests in any `window` (both set).
    pub per_window: Option<u32>,
    #[serde(with = "humantime_serde")]
    pub window: Option<Duration>,
    /// The first wait after a failed request; doubling (with jitter) up to
    /// `retry_max`.
    #[serde(with = "humantime_serde")]
    pub retry_first: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// Longest a request to the system may take; then it counts as failed.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Records sent at once (each record's own changes strictly in order).
    pub concurrency: usize,
    /// A change still unsent after this long is given up (dead).
    #[serde(with = "humantime_serde")]
    pub dead_after: Duration,
    /// While the system blocks the gateway: one probe request this often.
    #[serde(with = "humantime_serde")]
    pub block_probe: Duration,
    /// Who may post the system's webhooks (`/api/v1/sync/<system>/webhook`):
    /// the remote's addresses; empty: everyone (the system authenticates
    /// each hook anyway). Not `api.allow_from`, which is for the admin API.
    pub allow_from: AddressList,
    /// `[sync.onec]` only: how changes reach 1C ([`OnecTransport`]; unset:
    /// OData writes). Any other system's table refuses the key.
    pub transport: Option<OnecTransport>,
    /// `[sync.onec]` only, with `transport = "pull"`: how long rows handed
    /// to a poller stay its own before another poll may take them again
    /// (default 10 minutes).
    #[serde(with = "humantime_serde")]
    pub lease: Option<Duration>,
}

/// A lease of `[sync.onec] transport = "pull"` unless `lease` says otherwise.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10 * 60);

/// `[sync.onec] transport`: how the `onec` outbox reaches 1C.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnecTransport {
    /// The gateway writes to 1C's OData (the 1C writer, the runtime's worker).
    #[default]
    Odata,
    /// 1C polls the gateway (`POST /api/v1/exchange/onec/counterparties/lease`,
    /// then `/ack`): for sites that forbid OData writes. No worker sends.
    Pull,
}

impl OnecTransport {
    /// As the config and the status API write it.
    pub fn as_str(self) -> &'static str {
        match self {
            OnecTransport::Odata => "odata",
            OnecTransport::Pull => "pull",
        }
    }
}

impl Default for SyncSystemConfig {
    fn default() -> Self {
        SyncSystemConfig {
            dedupe_key: DedupeKey::default(),
            link_templates: std::collections::BTreeMap::new(),
            burst: None,
            per_second: None,
            per_window: None,
            window: None,
            retry_first: Duration::from_secs(1),
            retry_max: Duration::from_secs(5 * 60),
            timeout: Duration::from_secs(30),
            concurrency: 4,
            dead_after: Duration::from_secs(7 * 24 * 3600),
            block_probe: Duration::from_secs(10 * 60),
            allow_from: AddressList::default(),
            transport: None,
            lease: None,
        }
    }
}

impl SyncSystemConfig {
    /// `transport`, `odata` when unset.
    pub fn transport(&self) -> OnecTransport {
        self.transport.unwrap_or_default()
    }

    /// Whether 1C pulls this system's outbox (`transport = "pull"`).
    pub fn pulled(&self) -> bool {
        self.transport() == OnecTransport::Pull
    }

    /// `lease`, [`DEFAULT_LEASE`] when unset.
    pub fn lease(&self) -> Duration {
        self.lease.unwrap_or(DEFAULT_LEASE)
    }

    /// The page of the record `id` of `kind`, if a template is configured:
    /// `{id}` replaced by the id, percent-encoded (every byte but
    /// unreserved ones), so an id can never add a path, a query or a scheme.
    pub fn link(&self, kind: &str, id: &str) -> Option<String> {
        let template = self.link_templates.get(kind)?;
        let mut encoded = String::with_capacity(id.len());
        for b in id.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                encoded.push(char::from(b));
            } else {
                encoded.push_str(&format!("%{b:02X}"));
            }
        }
        Some(template.replace("{id}", &encoded))
    }
}

/// The name of 1C as a sync system (`[sync.onec]`, whose table alone takes
/// `transport` and `lease`): the same as its source's, so the feed never
/// sends 1C its own records.
pub const ONEC_SYSTEM: &str = "onec";

/// `[sync.onec]`'s keys beyond the runtime's (issue 19, the 1C writer):
/// the write user, the names of the fields written (`[sync.onec.fields]`)
/// and the contact kinds (`[sync.onec.kinds]`). Defaults are Бухгалтерия
/// 3.0's names; `docs/1c-writer.md` shows how to read a base's own from
/// its `$metadata`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OnecSyncConfig {
    /// 1C's user the writer speaks as (`CTI_ONEC_WRITE_USERNAME`): not
    /// `onec.username`, which stays read-only. Without a user and a
    /// password OData writes are off.
    pub write_username: String,
    /// Its password (`CTI_ONEC_WRITE_PASSWORD`); never logged.
    pub write_password: Option<Secret>,
    /// The field of `Catalog_Банки` (`onec.banks`) holding the BIK.
    pub bank_bik_field: String,
    /// The counterparty's fields the writer fills.
    pub fields: OnecWriteFields,
    /// The contact kinds (`Вид_Key`) of the rows it adds.
    pub kinds: OnecContactKinds,
}

impl Default for OnecSyncConfig {
    fn default() -> Self {
        OnecSyncConfig {
            write_username: String::new(),
            write_password: None,
            bank_bik_field: "Code".into(),
            fields: OnecWriteFields::default(),
            kinds: OnecContactKinds::default(),
        }
    }
}

/// The keys of [`OnecSyncConfig`], told from the runtime's in `[sync.onec]`.
const ONEC_SYNC_KEYS: &[&str] = &[
    "write_username",
    "write_password",
    "bank_bik_field",
    "fields",
    "kinds",
];

impl OnecSyncConfig {
    /// Splits `[sync.onec]` into the runtime's table and the writer's keys,
    /// each read with its own unknown-key check.
    fn split(mut table: toml::Table) -> Result<(SyncSystemConfig, OnecSyncConfig), String> {
        let mut own = toml::Table::new();
        for key in ONEC_SYNC_KEYS {
            if let Some(value) = table.remove(*key) {
                own.insert((*key).to_owned(), value);
            }
        }
        let runtime = SyncSystemConfig::deserialize(toml::Value::Table(table))
            .map_err(|e| format!("[sync.onec]: {}", e.to_string().trim_end()))?;
        let onec = OnecSyncConfig::deserialize(toml::Value::Table(own))
            .map_err(|e| format!("[sync.onec]: {}", e.to_string().trim_end()))?;
        Ok((runtime, onec))
    }

    /// Whether OData writes are on: a write user and its password.
    pub fn writes_on(&self) -> bool {
        !self.write_username.is_empty()
            && self.write_password.as_ref().is_some_and(|p| !p.is_empty())
    }
}

/// `[sync.onec.fields]`: the `Catalog_Контрагенты` properties the writer
/// fills; an empty name is not written. Defaults: Бухгалтерия 3.0.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OnecWriteFields {
    pub name: String,
    pub full_name: String,
    pub inn: String,
    pub kpp: String,
    /// The OGRN (БП 3.0 keeps it and the OGRNIP in `РегистрационныйНомер`).
    pub ogrn: String,
    pub ogrnip: String,
    /// The enumeration telling a legal entity from a person, and its values.
    pub kind: String,
    pub kind_values: OnecKindValues,
    /// The director's name (text): no such field in БП 3.0 (contact
    /// persons there), so not written unless named.
    pub director: String,
    /// The field a note about where the record came from goes to, and the
    /// note: `{id}` and `{source}` are replaced; empty: no note.
    pub comment_field: String,
    pub comment: String,
    /// The reference to the counterparty's main bank account.
    pub main_bank_account: String,
}

impl Default for OnecWriteFields {
    fn default() -> Self {
        OnecWriteFields {
            name: "Description".into(),
            full_name: "НаименованиеПолное".into(),
            inn: "ИНН".into(),
            kpp: "КПП".into(),
            ogrn: "РегистрационныйНомер".into(),
            ogrnip: "РегистрационныйНомер".into(),
            kind: "ЮридическоеФизическоеЛицо".into(),
            kind_values: OnecKindValues::default(),
            director: String::new(),
            comment_field: "Комментарий".into(),
            comment: String::new(),
            main_bank_account: "ОсновнойБанковскийСчет_Key".into(),
        }
    }
}

/// `[sync.onec.fields.kind_values]`: the enumeration's value per kind.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OnecKindValues {
    pub legal: String,
    pub sole_proprietor: String,
    pub person: String,
}

impl Default for OnecKindValues {
    fn default() -> Self {
        OnecKindValues {
            legal: "ЮридическоеЛицо".into(),
            sole_proprietor: "ФизическоеЛицо".into(),
            person: "ФизическоеЛицо".into(),
        }
    }
}

/// `[sync.onec.kinds]`: the contact information kinds of the rows the
/// writer adds, each a `PredefinedDataName` of `catalog` (looked up once)
/// or a `Вид_Key` GUID as it is. Defaults: БСП's predefined kinds.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OnecContactKinds {
    pub catalog: String,
    pub phone: String,
    pub email: String,
    pub address: String,
}

impl Default for OnecContactKinds {
    fn default() -> Self {
        OnecContactKinds {
            catalog: "Catalog_ВидыКонтактнойИнформации".into(),
            phone: "ТелефонКонтрагента".into(),
            email: "EmailКонтрагента".into(),
            address: "ФактАдресКонтрагента".into(),
        }
    }
}

/// How a CRM record is matched to one here by its requisites.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DedupeKey {
    /// The INN alone (branches with their own KPP are one client).
    Inn,
    /// The INN and the KPP (a branch is a client of its own).
    #[default]
    InnKpp,
}

/// `[[manager]]`: one responsible person, the extension calls for their
/// clients are routed to, and who they are in each system.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagerConfig {
    pub extension: String,
    pub name: String,
    /// The `_Key` of their `Catalog_Пользователи` entry in 1C.
    #[serde(default)]
    pub onec_user: Option<String>,
    #[serde(default)]
    pub bitrix24_user_id: Option<String>,
    #[serde(default)]
    pub amocrm_user_id: Option<String>,
    #[serde(default)]
    pub bpium_user_id: Option<String>,
}

impl ManagerConfig {
    /// The user ids this manager has, as (system, config key, id).
    pub fn user_ids(&self) -> impl Iterator<Item = (&'static str, &'static str, &str)> {
        [
            ("onec", "onec_user", &self.onec_user),
            ("bitrix24", "bitrix24_user_id", &self.bitrix24_user_id),
            ("amocrm", "amocrm_user_id", &self.amocrm_user_id),
            ("bpium", "bpium_user_id", &self.bpium_user_id),
        ]
        .into_iter()
        .filter_map(|(system, key, id)| id.as_deref().map(|id| (system, key, id)))
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_connections: 1024,
            max_connections_per_address: 64,
            reserved_connections: 32,
            first_request_timeout: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
            auth_failures_per_minute: 20,
            auth_block: Duration::from_secs(300),
            tls_cert: None,
            tls_key: None,
            trusted_proxies: AddressList::default(),
            names: Vec::new(),
        }
    }
}

impl Default for SoapConfig {
    fn default() -> Self {
        SoapConfig {
            path: "/telephony/ws/VATS".into(),
            username: DEMO_SOAP_USERNAME.into(),
            password: None,
            wsdl_requires_auth: false,
            public_url: None,
            allow_from: AddressList::default(),
        }
    }
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        DirectoryConfig {
            file: None,
            watch_interval: Duration::from_secs(2),
            settle: Duration::from_secs(2),
            max_shrink: 0.5,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: PathBuf::from("var/cti-gateway.sqlite"),
            new_store: false,
            journal_retention: Duration::from_secs(400 * 86_400),
        }
    }
}

impl Default for PopupConfig {
    fn default() -> Self {
        PopupConfig {
            replay_len: 50,
            replay_age: Duration::from_secs(120),
            queue_len: 64,
            ping_interval: Duration::from_secs(25),
            long_poll_max_wait: Duration::from_secs(60),
            allow_from: AddressList::default(),
            allowed_origins: OriginList::default(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// Reads environment variables; a seam so tests need not touch the process env.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Config {
    /// Demo mode: the shipped demo directory and the store in `folder` (see
    /// [`demo_folder`]), the seed's credentials, one demo operator.
    /// Everything it uses is printed at start.
    pub fn demo(env: EnvLookup<'_>, folder: &Path) -> Config {
        let mut config = Config {
            soap: SoapConfig {
                password: Some(Secret::new(DEMO_SOAP_PASSWORD)),
                ..SoapConfig::default()
            },
            directory: DirectoryConfig {
                file: Some(folder.join(DEMO_DIRECTORY_FILE)),
                ..DirectoryConfig::default()
            },
            store: StoreConfig {
                path: folder.join("cti-gateway.sqlite"),
                ..StoreConfig::default()
            },
            api: ApiConfig {
                token: Some(Secret::new(DEMO_API_TOKEN)),
                ..ApiConfig::default()
            },
            operators: vec![OperatorConfig {
                key: DEMO_OPERATOR_KEY.into(),
                token: Secret::new(DEMO_OPERATOR_TOKEN),
                name: "Demo operator".into(),
            }],
            ..Config::default()
        };
        config.apply_env(env);
        config
    }

    pub fn load(path: &Path, env: EnvLookup<'_>) -> Result<Config, ConfigError> {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path, env)
    }

    pub fn parse(text: &str, path: &Path, env: EnvLookup<'_>) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        config.source = Some(path.to_owned());
        config.resolve_paths(path);
        config.apply_env(env);
        config.validate()?;
        Ok(config)
    }

    /// Relative file paths in a config file (`directory.file`, `store.path`,
    /// `server.tls_cert`, `server.tls_key`) name files beside the config
    /// file, not in whatever directory the gateway was started from: the
    /// same file then means the same paths from a shell, systemd or cron.
    /// Demo mode has its own folder ([`demo_folder`]) and never comes here.
    fn resolve_paths(&mut self, config_file: &Path) {
        let base = match config_file.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
            _ => PathBuf::from("."),
        };
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.store.path);
        if let Some(servio) = self.servio.as_mut() {
            for path in [
                &mut servio.import_dir,
                &mut servio.archive_dir,
                &mut servio.error_dir,
                &mut servio.mapping,
            ] {
                resolve(path);
            }
        }
        for path in [
            &mut self.directory.file,
            &mut self.server.tls_cert,
            &mut self.server.tls_key,
        ]
        .into_iter()
        .flatten()
        {
            resolve(path);
        }
    }

    fn apply_env(&mut self, env: EnvLookup<'_>) {
        if let Some(v) = env(ENV_SOAP_USERNAME) {
            self.soap.username = v;
        }
        if let Some(v) = env(ENV_SOAP_PASSWORD) {
            self.soap.password = Some(Secret::new(v));
        }
        if let Some(v) = env(ENV_API_TOKEN) {
            self.api.token = Some(Secret::new(v));
        }
        if let Some(onec) = self.onec.as_mut() {
            if let Some(v) = env(ENV_ONEC_USERNAME) {
                onec.username = v;
            }
            if let Some(v) = env(ENV_ONEC_PASSWORD) {
                onec.password = Some(Secret::new(v));
            }
        }
        if let Some(v) = env(ENV_ONEC_WRITE_USERNAME) {
            self.sync.onec.write_username = v;
        }
        if let Some(v) = env(ENV_ONEC_WRITE_PASSWORD) {
            self.sync.onec.write_password = Some(Secret::new(v));
        }
    }

    /// The error for `key` of this configuration: the file and the key named.
    pub fn invalid(&self, key: &str, problem: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.source.clone().unwrap_or_default(),
            key: key.into(),
            problem: problem.into(),
        }
    }

    /// Every check of values the types let through. Routes are not this
    /// module's to know: the HTTP front checks `soap.path` against its own.
    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_soap()?;
        self.validate_server()?;
        if self.directory.file.is_none() && self.onec.is_none() && self.servio.is_none() {
            return Err(self.invalid(
                "directory.file",
                "is not set and neither is [onec] nor [servio]: the gateway needs at least one source of counterparties",
            ));
        }
        self.validate_directory()?;
        if let Some(servio) = &self.servio {
            self.validate_servio(servio)?;
        }
        if let Some(onec) = &self.onec {
            self.validate_onec(onec)?;
        }
        self.validate_popup()?;
        self.validate_log_and_api()?;
        self.validate_address_lists()?;
        self.validate_operators()?;
        self.validate_sync()?;
        if let Some(payments) = &self.payments {
            self.validate_payments(payments)?;
        }
        self.validate_managers()?;
        self.check_secrets()
    }

    /// Unless `server.listen` is a loopback address (only this machine can
    /// connect): refuses a `soap.password`, `api.token` or operator token
    /// that is one of [`PUBLISHED_SECRETS`] or shorter than
    /// [`MIN_SECRET_CHARS`], naming the key. Part of every load; call it
    /// again after changing `server.listen` (`serve --listen`).
    pub fn check_secrets(&self) -> Result<(), ConfigError> {
        let listen = self.server.listen;
        if listen.ip().is_loopback() {
            return Ok(());
        }
        let mut secrets: Vec<(String, &Secret, Option<&str>)> = Vec::new();
        if let Some(password) = &self.soap.password {
            secrets.push(("soap.password".into(), password, Some(ENV_SOAP_PASSWORD)));
        }
        if let Some(token) = &self.api.token {
            secrets.push(("api.token".into(), token, Some(ENV_API_TOKEN)));
        }
        for (i, op) in self.operators.iter().enumerate() {
            secrets.push((format!("operator[{i}].token"), &op.token, None));
        }
        for (key, secret, env) in secrets {
            let value = secret.expose();
            let or_env = env.map(|e| format!(" (or set {e})")).unwrap_or_default();
            if PUBLISHED_SECRETS.contains(&value) {
                return Err(self.invalid(
                    &key,
                    format!("is a published example or demo value, which anyone can try, while server.listen ({listen}) is reachable from other machines: set a secret of your own{or_env}, at least {MIN_SECRET_CHARS} characters (e.g. `openssl rand -hex 16`)"),
                ));
            }
            if value.chars().count() < MIN_SECRET_CHARS {
                return Err(self.invalid(
                    &key,
                    format!("is shorter than {MIN_SECRET_CHARS} characters while server.listen ({listen}) is reachable from other machines: set a longer one{or_env} (e.g. `openssl rand -hex 16`)"),
                ));
            }
        }
        Ok(())
    }

    /// Each allow-list and `server.trusted_proxies`: every entry an address
    /// or a network (a host name is not: the gateway resolves nothing).
    fn validate_address_lists(&self) -> Result<(), ConfigError> {
        for (key, list) in [
            ("server.trusted_proxies", &self.server.trusted_proxies),
            ("soap.allow_from", &self.soap.allow_from),
            ("popup.allow_from", &self.popup.allow_from),
            ("api.allow_from", &self.api.allow_from),
            ("metrics.allow_from", &self.metrics.allow_from),
        ] {
            if let Some(entry) = list.first_bad() {
                return Err(self.invalid(
                    key,
                    format!("has the entry {entry:?}, which is neither an IP address nor a network: write addresses or CIDRs such as \"203.0.113.0/24\", \"198.51.100.7\" or \"2001:db8::/32\" (host names are not resolved)"),
                ));
            }
        }
        Ok(())
    }

    fn validate_log_and_api(&self) -> Result<(), ConfigError> {
        // What main would otherwise replace by `info` without a word; and a
        // misspelt level (`warning`) reads as a target name, which would
        // silence every line, errors included.
        if !is_log_filter(&self.log.level) {
            return Err(self.invalid(
                "log.level",
                format!("is {:?}, not a log filter: write a level (off, error, warn, info, debug, trace) or directives such as \"info,cti_gateway=debug\" (each directive a level or target=level)", self.log.level),
            ));
        }
        if self.api.token.as_ref().is_some_and(Secret::is_empty) {
            return Err(self.invalid(
                "api.token",
                "is empty: set a token, or remove the key to refuse every push and journal request",
            ));
        }
        Ok(())
    }

    fn validate_soap(&self) -> Result<(), ConfigError> {
        if self.soap.password.as_ref().is_none_or(Secret::is_empty) {
            return Err(self.invalid(
                "soap.password",
                format!("is not set: give the password the PBX sends (or set {ENV_SOAP_PASSWORD}); a config file never falls back to the demo password"),
            ));
        }
        if self.soap.username.is_empty() || self.soap.username.contains(':') {
            return Err(self.invalid("soap.username", "must be non-empty and contain no ':'"));
        }
        if !self.soap.path.starts_with('/') || self.soap.path.contains('?') {
            return Err(self.invalid(
                "soap.path",
                "must start with '/' and hold no query, e.g. \"/telephony/ws/VATS\"",
            ));
        }
        if let Some(url) = &self.soap.public_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(self.invalid("soap.public_url", "must be an http:// or https:// URL"));
            }
        }
        Ok(())
    }

    fn validate_server(&self) -> Result<(), ConfigError> {
        if self.server.max_connections == 0 {
            return Err(self.invalid("server.max_connections", "must be at least 1"));
        }
        for (key, value) in [
            (
                "server.header_read_timeout",
                self.server.header_read_timeout,
            ),
            ("server.body_read_timeout", self.server.body_read_timeout),
        ] {
            if value.is_zero() {
                return Err(self.invalid(key, "must be longer than 0s"));
            }
        }
        match (&self.server.tls_cert, &self.server.tls_key) {
            (Some(_), None) => {
                return Err(self.invalid(
                    "server.tls_key",
                    "is not set while server.tls_cert is: give both (the certificate's PEM file and its key's), or neither for plain HTTP",
                ))
            }
            (None, Some(_)) => {
                return Err(self.invalid(
                    "server.tls_cert",
                    "is not set while server.tls_key is: give both (the certificate's PEM file and its key's), or neither for plain HTTP",
                ))
            }
            _ => {}
        }
        self.validate_connection_limits()?;
        if self.server.auth_failures_per_minute == 0 {
            return Err(self.invalid("server.auth_failures_per_minute", "must be at least 1"));
        }
        if self.server.auth_block < Duration::from_secs(1)
            || self.server.auth_block > Duration::from_secs(24 * 3600)
        {
            return Err(self.invalid("server.auth_block", "must be between 1s and 24h"));
        }
        Ok(())
    }

    /// `server.max_connections_per_address`, `server.reserved_connections`,
    /// `server.first_request_timeout` and `server.names`.
    fn validate_connection_limits(&self) -> Result<(), ConfigError> {
        let server = &self.server;
        if server.max_connections_per_address == 0 {
            return Err(self.invalid("server.max_connections_per_address", "must be at least 1"));
        }
        // Reserved slots are for the addresses soap.allow_from names; with
        // no list they would be for nobody, so they are not set aside.
        if !self.soap.allow_from.is_empty() && server.reserved_connections >= server.max_connections
        {
            return Err(self.invalid(
                "server.reserved_connections",
                format!(
                    "must be less than server.max_connections ({}): the reserved slots are the last of them, kept for soap.allow_from",
                    server.max_connections
                ),
            ));
        }
        if server.first_request_timeout.is_zero()
            || server.first_request_timeout > Duration::from_secs(600)
        {
            return Err(self.invalid(
                "server.first_request_timeout",
                "must be longer than 0s and at most 10m",
            ));
        }
        for name in &server.names {
            if let Err(problem) = check_host_name(name) {
                return Err(self.invalid(
                    "server.names",
                    format!("has the entry {name:?}, which {problem}: write host names the gateway is reached by, with an optional port, e.g. \"gw.example.ru\" or \"gw.example.ru:8443\""),
                ));
            }
        }
        Ok(())
    }

    fn validate_directory(&self) -> Result<(), ConfigError> {
        let directory = &self.directory;
        if directory.settle > Duration::from_secs(3600) {
            return Err(self.invalid("directory.settle", "must be at most 1h"));
        }
        // NaN fails both comparisons, so it is refused too.
        if !(directory.max_shrink > 0.0 && directory.max_shrink <= 1.0) {
            return Err(self.invalid(
                "directory.max_shrink",
                "must be a fraction over 0 and at most 1, e.g. 0.5 for 50% (1 turns the guard off)",
            ));
        }
        Ok(())
    }

    fn validate_servio(&self, servio: &ServioConfig) -> Result<(), ConfigError> {
        if !servio.poll.is_zero() && servio.poll < Duration::from_secs(1) {
            return Err(self.invalid(
                "servio.poll",
                "must be at least 1s (or 0s: scan only on SIGHUP)",
            ));
        }
        if servio.settle > Duration::from_secs(3600) {
            return Err(self.invalid("servio.settle", "must be at most 1h"));
        }
        if let Some(marker) = &servio.ready_marker {
            if !marker.contains("{name}") || marker.trim() == "{name}" {
                return Err(self.invalid(
                    "servio.ready_marker",
                    "must contain {name} and something more, e.g. \"{name}.ok\"",
                ));
            }
            if marker.contains(['/', '\\']) {
                return Err(self.invalid(
                    "servio.ready_marker",
                    "must be a file name, without folders",
                ));
            }
        }
        if servio.max_records == 0 {
            return Err(self.invalid("servio.max_records", "must be at least 1"));
        }
        if let Some(phone) = &servio.default_manager_phone {
            let digits = phone.chars().filter(char::is_ascii_digit).count();
            if digits < 2
                || !phone
                    .chars()
                    .all(|c| c.is_ascii_digit() || " +-()".contains(c))
            {
                return Err(self.invalid(
                    "servio.default_manager_phone",
                    "must be an extension (2-6 digits) or a phone number: the PBX routes calls to it",
                ));
            }
        }
        for (key, dir) in [
            ("servio.archive_dir", &servio.archive_dir),
            ("servio.error_dir", &servio.error_dir),
        ] {
            if dir == &servio.import_dir {
                return Err(self.invalid(key, "must not be servio.import_dir"));
            }
        }
        Ok(())
    }

    fn validate_onec(&self, onec: &OnecConfig) -> Result<(), ConfigError> {
        if !(onec.odata_url.starts_with("http://") || onec.odata_url.starts_with("https://")) {
            return Err(self.invalid("onec.odata_url", "must be an http:// or https:// URL"));
        }
        if onec.refresh < Duration::from_secs(10) {
            return Err(self.invalid("onec.refresh", "must be at least 10s"));
        }
        if onec.lookup_budget_ms > 10_000 {
            return Err(self.invalid(
                "onec.lookup_budget_ms",
                "must be at most 10000 (the PBX will not wait longer)",
            ));
        }
        for (key, name, optional) in [
            ("onec.counterparties", &onec.counterparties, false),
            ("onec.contacts", &onec.contacts_set(), false),
            ("onec.category_field", &onec.category_field, true),
            ("onec.manager_phone_field", &onec.manager_phone_field, true),
            ("onec.ogrn_field", &onec.ogrn_field, true),
            ("onec.code_field", &onec.code_field, true),
            ("onec.kind_field", &onec.kind_field, true),
            ("onec.manager_ref_field", &onec.manager_ref_field, true),
            ("onec.director_field", &onec.director_field, true),
            ("onec.bank_accounts", &onec.bank_accounts, true),
            ("onec.banks", &onec.banks, false),
            (
                "onec.bank_account_fields.owner",
                &onec.bank_account_fields.owner,
                false,
            ),
            (
                "onec.bank_account_fields.number",
                &onec.bank_account_fields.number,
                false,
            ),
            (
                "onec.bank_account_fields.bank",
                &onec.bank_account_fields.bank,
                false,
            ),
            ("onec.bank_fields.bik", &onec.bank_fields.bik, false),
            ("onec.bank_fields.name", &onec.bank_fields.name, false),
            (
                "onec.bank_fields.corr_account",
                &onec.bank_fields.corr_account,
                false,
            ),
        ] {
            let unset = optional && name.is_empty();
            if !unset && !is_odata_name(name) {
                return Err(self.invalid(
                    key,
                    "must be an OData name as 1C publishes it: letters, digits and _ only",
                ));
            }
        }
        for (key, kind) in [
            ("onec.legal_address_kind", &onec.legal_address_kind),
            ("onec.actual_address_kind", &onec.actual_address_kind),
        ] {
            if !kind.is_empty() && !is_guid(kind) {
                return Err(self.invalid(
                    key,
                    "must be the contact kind's Вид_Key, a GUID (8-4-4-4-12 hex digits)",
                ));
            }
        }
        if !(1..=50_000).contains(&onec.page_size) {
            return Err(self.invalid("onec.page_size", "must be between 1 and 50000"));
        }
        if onec.timeout < Duration::from_millis(100) || onec.timeout > Duration::from_secs(600) {
            return Err(self.invalid("onec.timeout", "must be between 100ms and 10m"));
        }
        if onec.negative_ttl > Duration::from_secs(3600) {
            return Err(self.invalid("onec.negative_ttl", "must be at most 1h"));
        }
        Ok(())
    }

    /// `[payments]`: OData needs `[onec]` (its URL and read user); the
    /// names are OData names; the offset is `+HH:MM`/`-HH:MM`.
    fn validate_payments(&self, payments: &PaymentsConfig) -> Result<(), ConfigError> {
        if payments.source == PaymentsSource::Odata && self.onec.is_none() {
            return Err(self.invalid(
                "payments.source",
                "is \"odata\" but [onec] is not set: payments are read with [onec]'s odata_url and read user (or set source = \"push\")",
            ));
        }
        if payments.poll < Duration::from_secs(1) {
            return Err(self.invalid("payments.poll", "must be at least 1s"));
        }
        if payments.reread > Duration::from_secs(366 * 24 * 3600) {
            return Err(self.invalid("payments.reread", "must be at most 366d"));
        }
        if !(1..=50_000).contains(&payments.page_size) {
            return Err(self.invalid("payments.page_size", "must be between 1 and 50000"));
        }
        let offset = payments.utc_offset.as_bytes();
        let offset_ok = offset.len() == 6
            && matches!(offset[0], b'+' | b'-')
            && offset[3] == b':'
            && [1, 2, 4, 5].iter().all(|&i| offset[i].is_ascii_digit())
            && (offset[1] - b'0') * 10 + (offset[2] - b'0') <= 14
            && (offset[4] - b'0') * 10 + (offset[5] - b'0') < 60;
        if !offset_ok {
            return Err(self.invalid(
                "payments.utc_offset",
                "must be an offset such as \"+03:00\" (1C's dates are local time)",
            ));
        }
        let f = &payments.fields;
        for (key, name, optional) in [
            ("payments.fields.document", &f.document, false),
            ("payments.fields.section", &f.section, false),
            ("payments.fields.number", &f.number, false),
            ("payments.fields.date", &f.date, false),
            ("payments.fields.amount", &f.amount, false),
            ("payments.fields.counterparty", &f.counterparty, false),
            ("payments.fields.row_amount", &f.row_amount, false),
            ("payments.fields.row_invoice", &f.row_invoice, true),
            ("payments.fields.row_contract", &f.row_contract, true),
        ] {
            let unset = optional && name.is_empty();
            if !unset && !is_odata_name(name) {
                return Err(self.invalid(
                    key,
                    "must be an OData name as 1C publishes it: letters, digits and _ only",
                ));
            }
        }
        Ok(())
    }

    fn validate_popup(&self) -> Result<(), ConfigError> {
        if self.popup.replay_len == 0 || self.popup.queue_len == 0 {
            return Err(self.invalid("popup", "replay_len and queue_len must be at least 1"));
        }
        if self.popup.ping_interval < Duration::from_millis(100)
            || self.popup.ping_interval > Duration::from_secs(3600)
        {
            return Err(self.invalid("popup.ping_interval", "must be between 100ms and 1h"));
        }
        if self.popup.long_poll_max_wait < Duration::from_secs(1)
            || self.popup.long_poll_max_wait > Duration::from_secs(60)
        {
            return Err(self.invalid("popup.long_poll_max_wait", "must be between 1s and 60s"));
        }
        if let Some(entry) = self.popup.allowed_origins.first_bad() {
            return Err(self.invalid(
                "popup.allowed_origins",
                format!("has the entry {entry:?}, which is not a web origin: write the scheme and host (and a port if not the default) of the pages that open the screens, such as \"https://crm.example.ru\" or \"http://10.0.0.5:8080\", with no path"),
            ));
        }
        Ok(())
    }

    fn validate_operators(&self) -> Result<(), ConfigError> {
        let mut keys = std::collections::HashSet::new();
        let mut tokens = std::collections::HashSet::new();
        for (i, op) in self.operators.iter().enumerate() {
            if op.key.trim().is_empty() {
                return Err(self.invalid(&format!("operator[{i}].key"), "must not be empty"));
            }
            if !keys.insert(op.key.as_str()) {
                return Err(self.invalid(
                    &format!("operator[{i}].key"),
                    format!("'{}' is used by an earlier [[operator]]", op.key),
                ));
            }
            if op.token.expose().len() < 8 {
                return Err(self.invalid(
                    &format!("operator[{i}].token"),
                    "must be at least 8 characters",
                ));
            }
            if !tokens.insert(op.token.expose()) {
                return Err(self.invalid(
                    &format!("operator[{i}].token"),
                    "is the same as an earlier operator's token",
                ));
            }
        }
        Ok(())
    }
}

impl Config {
    /// `[sync.<system>]`'s limits, retries and timeouts: numbers a
    /// limiter and a worker can run on.
    fn validate_sync_system(
        &self,
        system: &str,
        table: &SyncSystemConfig,
    ) -> Result<(), ConfigError> {
        let key = |name: &str| format!("sync.{system}.{name}");
        if table.burst == Some(0) {
            return Err(self.invalid(
                &key("burst"),
                "is 0: the system's bucket holds at least 1 request (1: no burst)",
            ));
        }
        if let Some(rate) = table.per_second {
            // Slower than one request a day is a typo, not a limit.
            if !(1.0 / 86_400.0..=100_000.0).contains(&rate) {
                return Err(self.invalid(
                    &key("per_second"),
                    format!("is {rate}: write the system's requests per second, e.g. 2 or 0.5"),
                ));
            }
        }
        match (table.per_window, table.window) {
            (Some(0), _) => {
                return Err(self.invalid(
                    &key("per_window"),
                    "is 0: write how many requests the system takes per window, e.g. 100",
                ))
            }
            (_, Some(window)) if window < Duration::from_millis(10) => {
                return Err(self.invalid(
                    &key("window"),
                    "is under 10ms: write the system's window, e.g. \"30s\"",
                ))
            }
            (Some(_), None) | (None, Some(_)) => {
                let (set, unset) = if table.per_window.is_some() {
                    ("per_window", "window")
                } else {
                    ("window", "per_window")
                };
                return Err(self.invalid(
                    &key(set),
                    format!("is set without {unset}: a window limit needs both"),
                ));
            }
            _ => {}
        }
        if table.per_window.is_some() && (table.burst.is_some() || table.per_second.is_some()) {
            return Err(self.invalid(
                &key("per_window"),
                "is set with burst or per_second: limit the system by a bucket or by a window, not both",
            ));
        }
        for (name, value) in [
            ("retry_first", table.retry_first),
            ("retry_max", table.retry_max),
            ("timeout", table.timeout),
            ("dead_after", table.dead_after),
            ("block_probe", table.block_probe),
        ] {
            if value.is_zero() {
                return Err(self.invalid(&key(name), "is 0: write a duration, e.g. \"1s\""));
            }
        }
        if table.retry_max < table.retry_first {
            return Err(self.invalid(
                &key("retry_max"),
                format!(
                    "is {}, under retry_first ({}): the longest wait cannot be shorter than the first",
                    humantime::format_duration(table.retry_max),
                    humantime::format_duration(table.retry_first)
                ),
            ));
        }
        if system != ONEC_SYSTEM {
            for (name, set) in [
                ("transport", table.transport.is_some()),
                ("lease", table.lease.is_some()),
            ] {
                if set {
                    return Err(self.invalid(
                        &key(name),
                        format!("is a key of [sync.{ONEC_SYSTEM}] only (how changes reach 1C)"),
                    ));
                }
            }
        }
        if let Some(lease) = table.lease {
            if !(Duration::from_secs(1)..=Duration::from_secs(24 * 3600)).contains(&lease) {
                return Err(self.invalid(
                    &key("lease"),
                    "must be between 1s and 24h: how long a poller keeps the rows it was handed, e.g. \"10m\"",
                ));
            }
            if !table.pulled() {
                return Err(self.invalid(
                    &key("lease"),
                    "is set without transport = \"pull\": only rows 1C pulls are leased",
                ));
            }
        }
        if table.concurrency == 0 || table.concurrency > 64 {
            return Err(self.invalid(
                &key("concurrency"),
                format!(
                    "is {}: write how many records are sent at once, 1 to 64",
                    table.concurrency
                ),
            ));
        }
        Ok(())
    }

    /// Every `[sync.<system>]` is claimed by one of `registered` (the
    /// systems the gateway is started with) or named in [`SYNC_SYSTEMS`]
    /// (a product system whose module this build may lack: the table keeps
    /// the sync store, and the caller warns that nothing is sent). Any other
    /// table would sync nothing while looking configured: it stops
    /// start-up, naming it.
    pub fn check_sync_tables(&self, registered: &[&str]) -> Result<(), ConfigError> {
        for (system, _) in self.sync.systems() {
            if !registered.contains(&system) && !SYNC_SYSTEMS.contains(&system) {
                let known: Vec<&str> = registered.iter().chain(SYNC_SYSTEMS).copied().collect();
                return Err(self.invalid(
                    &format!("sync.{system}"),
                    format!(
                        "names a system this gateway does not have (it has {})",
                        known.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `[sync]`: precedence names known and each once; every link template
    /// an `http(s)://` URL with a host and `{id}`.
    fn validate_sync(&self) -> Result<(), ConfigError> {
        if self.sync.max_pending == 0 {
            return Err(self.invalid(
                "sync.max_pending",
                "is 0, which would refuse every webhook: leave it out for 100000, or give the most rows a system may have waiting",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for name in &self.sync.manager_precedence {
            if !MANAGER_SOURCES.contains(&name.as_str()) {
                return Err(self.invalid(
                    "sync.manager_precedence",
                    format!(
                        "names {name:?}, which is not a source of managers: use {}",
                        MANAGER_SOURCES.join(", ")
                    ),
                ));
            }
            if !seen.insert(name.as_str()) {
                return Err(
                    self.invalid("sync.manager_precedence", format!("names {name:?} twice"))
                );
            }
        }
        for (system, table) in self.sync.systems() {
            if !is_system_name(system) {
                return Err(self.invalid(
                    &format!("sync.{}", system.chars().take(64).collect::<String>()),
                    format!(
                        "is not a system's name (1-64 lowercase Latin letters, digits, _ or -): the systems are {}",
                        SYNC_SYSTEMS.join(", ")
                    ),
                ));
            }
            self.validate_sync_system(system, table)?;
            // Under pull 1C fetches its rows itself: no OData to write to.
            if system == ONEC_SYSTEM && self.onec.is_none() && !table.pulled() {
                return Err(self.invalid(
                    "sync.onec",
                    "is set without [onec]: the 1C writer speaks to the base [onec] odata_url names (or set transport = \"pull\", where 1C fetches the rows)",
                ));
            }
            if let Some(entry) = table.allow_from.first_bad() {
                return Err(self.invalid(
                    &format!("sync.{system}.allow_from"),
                    format!("has the entry {entry:?}, which is neither an IP address nor a network: write the system's addresses or CIDRs such as \"203.0.113.0/24\" (host names are not resolved)"),
                ));
            }
            for (kind, template) in &table.link_templates {
                let key = format!("sync.{system}.link_templates.{kind}");
                if kind.is_empty()
                    || kind.len() > 64
                    || !kind
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                {
                    return Err(self.invalid(
                        &key,
                        "is not a kind: lowercase Latin letters, digits and _, e.g. company or contact",
                    ));
                }
                if let Err(problem) = check_link_template(template) {
                    return Err(self.invalid(
                        &key,
                        format!("is {template:?}, which {problem}: write e.g. \"https://portal.example.ru/crm/company/details/{{id}}/\""),
                    ));
                }
            }
        }
        Ok(())
    }

    /// `[[manager]]`: an extension and a name each; no extension and no
    /// user id of a system used twice (a user id must say one person).
    fn validate_managers(&self) -> Result<(), ConfigError> {
        let mut extensions = std::collections::HashSet::new();
        let mut users = std::collections::HashSet::new();
        for (i, manager) in self.managers.iter().enumerate() {
            let extension = manager.extension.trim();
            if !(2..=6).contains(&extension.len()) || !extension.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(self.invalid(
                    &format!("manager[{i}].extension"),
                    format!(
                        "is {:?}, not an extension (2-6 digits): the PBX routes calls to it",
                        manager.extension
                    ),
                ));
            }
            if !extensions.insert(extension) {
                return Err(self.invalid(
                    &format!("manager[{i}].extension"),
                    format!("'{extension}' is used by an earlier [[manager]]"),
                ));
            }
            if manager.name.trim().is_empty() {
                return Err(self.invalid(&format!("manager[{i}].name"), "must not be empty"));
            }
            for (system, key, id) in manager.user_ids() {
                if id.trim().is_empty() {
                    return Err(self.invalid(&format!("manager[{i}].{key}"), "must not be empty"));
                }
                if !users.insert((system, id.trim())) {
                    return Err(self.invalid(
                        &format!("manager[{i}].{key}"),
                        format!(
                            "'{id}' is used by an earlier [[manager]]: a user id names one person"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A link template: an `http(s)://` URL with a host, `{id}` in it, no
/// whitespace, quotes or angle brackets (it becomes an `href`).
fn check_link_template(template: &str) -> Result<(), &'static str> {
    let lower = template.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
        .ok_or("is not an http:// or https:// URL")?;
    if rest.is_empty() || rest.starts_with('/') || rest.starts_with("{id}") {
        return Err("has no host");
    }
    if !template.contains("{id}") {
        return Err("has no {id} for the record's id");
    }
    if template.len() > 512
        || template.chars().any(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '<' | '>' | '\\')
        })
    {
        return Err(
            "holds spaces, quotes, angle brackets or control characters, or is over 512 bytes",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("gw.toml"), &no_env)
    }

    const MINIMAL: &str = "[soap]\npassword = \"s3cret\"\n[directory]\nfile = \"x.jsonl\"\n";

    #[test]
    fn example_config_in_the_repository_is_valid() {
        let text = include_str!("../config/example.toml");
        let config = parse(text).expect("config/example.toml must load");
        assert_eq!(config.soap.path, "/telephony/ws/VATS");
        assert!(!config.operators.is_empty());
    }

    #[test]
    fn the_example_configs_sync_and_manager_blocks_load_once_uncommented() {
        let text = include_str!("../config/example.toml");
        let start = text.find("# [sync]").expect("a [sync] block");
        let end = text
            .find("# One block per operator")
            .expect("[[operator]] after it");
        let is_key = |line: &str| {
            line.starts_with('[')
                || line.split_once(" = ").is_some_and(|(key, _)| {
                    key.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                })
        };
        let uncommented: String = text[start..end]
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest) if is_key(rest) => format!("{rest}\n"),
                _ => format!("{line}\n"),
            })
            .collect();
        // [sync.onec] writes to the base [onec] names (commented out above it).
        let onec = "[onec]\nodata_url = \"http://1c/base/odata/standard.odata\"\n";
        let text = format!("{}{uncommented}{}{onec}", &text[..start], &text[end..]);
        let config = parse(&text).expect("the uncommented example must load");
        assert_eq!(config.sync.manager_precedence, MANAGER_SOURCES);
        assert!(config.sync.system("onec").is_some());
        assert!(config.sync.onec.writes_on());
        assert_eq!(config.sync.onec.fields, OnecWriteFields::default());
        assert_eq!(config.sync.onec.kinds, OnecContactKinds::default());
        let b24 = config.sync.system("bitrix24").expect("[sync.bitrix24]");
        assert_eq!(b24.dedupe_key, DedupeKey::InnKpp);
        assert!(b24.link("company", "1").is_some());
        assert_eq!(config.managers.len(), 1);
        assert_eq!(config.managers[0].user_ids().count(), 4);
    }

    #[test]
    fn the_example_configs_onec_and_payments_blocks_load_once_uncommented() {
        let text = include_str!("../config/example.toml");
        let start = text.find("# [onec]").expect("an [onec] block");
        let end = text.find("\n[store]").expect("[store] after it");
        let is_key = |line: &str| {
            line.starts_with('[')
                || line.split_once(" = ").is_some_and(|(key, _)| {
                    key.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                })
        };
        let uncommented: String = text[start..end]
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest) if is_key(rest) => format!("{rest}\n"),
                _ => format!("{line}\n"),
            })
            .collect();
        let text = format!("{}{uncommented}{}", &text[..start], &text[end..]);
        let config = parse(&text).expect("the uncommented example must load");
        let payments = config.payments.expect("[payments]");
        assert_eq!(payments.source, PaymentsSource::Odata);
        assert_eq!(payments.poll, Duration::from_secs(300));
        assert_eq!(payments.reread, Duration::from_secs(3 * 86_400));
        let defaults = PaymentFields::default();
        assert_eq!(payments.fields.document, defaults.document);
        assert_eq!(payments.fields.row_contract, defaults.row_contract);
    }

    #[test]
    fn payments_settings_are_checked_naming_the_key() {
        let onec = "[onec]\nodata_url = \"http://1c/base/odata/standard.odata\"\n";
        let key_of = |extra: &str| match parse(&format!("{MINIMAL}{extra}")) {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("{extra}: {other:?}"),
        };
        assert_eq!(
            key_of("[payments]\nsource = \"odata\"\n"),
            "payments.source"
        );
        assert_eq!(
            key_of(&format!(
                "{onec}[payments]\nsource = \"odata\"\npoll = \"500ms\"\n"
            )),
            "payments.poll"
        );
        assert_eq!(
            key_of("[payments]\nsource = \"push\"\nutc_offset = \"MSK\"\n"),
            "payments.utc_offset"
        );
        assert_eq!(
            key_of("[payments]\nsource = \"push\"\n[payments.fields]\ndate = \"Дата документа\"\n"),
            "payments.fields.date"
        );
        let push = parse(&format!(
            "{MINIMAL}[payments]\nsource = \"push\"\n[payments.fields]\nrow_invoice = \"\"\n"
        ))
        .expect("push needs no [onec]");
        assert_eq!(
            push.payments.expect("payments").source,
            PaymentsSource::Push
        );
        assert!(parse(&format!("{MINIMAL}[payments]\nsource = \"ftp\"\n")).is_err());
    }

    #[test]
    fn the_contacts_layout_picks_the_default_contacts_set() {
        let onec = |extra: &str| {
            parse(&format!(
                "{MINIMAL}[onec]\nodata_url = \"http://1c/base/odata/standard.odata\"\n{extra}"
            ))
        };
        let section = onec("").expect("valid").onec.expect("onec");
        assert_eq!(section.contacts_layout, ContactsLayout::Section);
        assert_eq!(
            section.contacts_set(),
            "Catalog_Контрагенты_КонтактнаяИнформация"
        );
        let register = onec("contacts_layout = \"register\"\nkind_field = \"ЮрФизЛицо\"\n")
            .expect("valid")
            .onec
            .expect("onec");
        assert_eq!(
            register.contacts_set(),
            "InformationRegister_КонтактнаяИнформация"
        );
        let named = onec("contacts_layout = \"register\"\ncontacts = \"InformationRegister_КИ\"\n")
            .expect("valid")
            .onec
            .expect("onec");
        assert_eq!(named.contacts_set(), "InformationRegister_КИ");
        let err = onec("contacts_layout = \"table\"\n").expect_err("unknown layout");
        assert!(err.to_string().contains("contacts_layout"), "{err}");
        let err = onec("ogrn_field = \"ОГРН; drop\"\n").expect_err("not an OData name");
        assert!(err.to_string().contains("onec.ogrn_field"), "{err}");
    }

    #[test]
    fn the_requisites_keys_have_defaults_and_are_checked() {
        let onec = |extra: &str| {
            parse(&format!(
                "{MINIMAL}[onec]\nodata_url = \"http://1c/base/odata/standard.odata\"\n{extra}"
            ))
        };
        let plain = onec("").expect("valid").onec.expect("onec");
        assert!(plain.director_field.is_empty() && plain.bank_accounts.is_empty());
        assert_eq!(plain.banks, "Catalog_Банки");
        assert_eq!(plain.bank_account_fields.number, "НомерСчета");
        assert_eq!(plain.bank_fields.corr_account, "КоррСчет");
        let set = onec(
            "director_field = \"Руководитель\"\nlegal_address_kind = \"2B7A9C64-1F0E-4D6A-9A41-7C1E0D5B3A04\"\nbank_accounts = \"Catalog_БанковскиеСчета\"\nbank_account_fields = { owner = \"Owner_Key\" }\n",
        )
        .expect("valid")
        .onec
        .expect("onec");
        assert_eq!(set.bank_account_fields.owner, "Owner_Key");
        assert_eq!(
            set.bank_account_fields.bank, "Банк_Key",
            "the others keep theirs"
        );
        let err = onec("actual_address_kind = \"Фактический адрес\"\n").expect_err("not a GUID");
        assert!(
            err.to_string().contains("onec.actual_address_kind"),
            "{err}"
        );
        let err = onec("bank_fields = { bik = \"\" }\n").expect_err("empty name");
        assert!(err.to_string().contains("onec.bank_fields.bik"), "{err}");
        let err = onec("bank_fields = { swift = \"X\" }\n").expect_err("unknown key");
        assert!(err.to_string().contains("swift"), "{err}");
    }

    #[test]
    fn every_key_has_a_default() {
        let c = parse(MINIMAL).expect("minimal config");
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.store.path, PathBuf::from("./var/cti-gateway.sqlite"));
        assert!(c.onec.is_none());
    }

    #[test]
    fn relative_paths_resolve_against_the_config_files_folder() {
        let text = format!(
            "{MINIMAL}[store]\npath = \"data/s.sqlite\"\n[server]\ntls_cert = \"tls/c.pem\"\ntls_key = \"/abs/k.pem\"\n"
        );
        let c = Config::parse(&text, Path::new("/etc/cti/gw.toml"), &no_env).expect("config");
        assert_eq!(c.store.path, Path::new("/etc/cti/data/s.sqlite"));
        assert_eq!(
            c.server.tls_cert.as_deref(),
            Some(Path::new("/etc/cti/tls/c.pem"))
        );
        assert_eq!(c.server.tls_key.as_deref(), Some(Path::new("/abs/k.pem")));
        let file = c.directory.file.as_deref().expect("directory.file");
        assert!(file.starts_with("/etc/cti"), "{}", file.display());
    }

    #[test]
    fn unknown_key_is_named_with_the_file() {
        let err =
            parse(&format!("{MINIMAL}[server]\nlisten_addr = \"x\"\n")).expect_err("unknown key");
        let msg = err.to_string();
        assert!(
            msg.contains("gw.toml") && msg.contains("listen_addr"),
            "{msg}"
        );
    }

    #[test]
    fn bad_value_is_named() {
        let err =
            parse(&format!("{MINIMAL}[server]\nlisten = \"nowhere\"\n")).expect_err("bad addr");
        assert!(err.to_string().contains("listen"), "{err}");
        let err = parse(&format!(
            "{MINIMAL}[server]\nheader_read_timeout = \"soon\"\n"
        ))
        .expect_err("bad duration");
        assert!(err.to_string().contains("header_read_timeout"), "{err}");
    }

    #[test]
    fn a_log_filter_that_does_not_parse_and_an_empty_api_token_are_refused() {
        let err =
            parse(&format!("{MINIMAL}[log]\nlevel = \"inf o,=[\"\n")).expect_err("bad filter");
        assert!(err.to_string().contains("log.level"), "{err}");
        assert!(parse(&format!(
            "{MINIMAL}[log]\nlevel = \"info,cti_gateway=debug\"\n"
        ))
        .is_ok());
        for misspelt in ["warning", "verbose", "info,cti_gateway=loud"] {
            let err = parse(&format!("{MINIMAL}[log]\nlevel = \"{misspelt}\"\n"))
                .expect_err("a misspelt level");
            assert!(err.to_string().contains("log.level"), "{err}");
        }
        for good in ["WARN", "off", "warn,hyper=error", "cti_gateway[call]=debug"] {
            assert!(
                parse(&format!("{MINIMAL}[log]\nlevel = \"{good}\"\n")).is_ok(),
                "{good}"
            );
        }
        let err = parse(&format!("{MINIMAL}[api]\ntoken = \"\"\n")).expect_err("empty token");
        assert!(err.to_string().contains("api.token"), "{err}");
    }

    #[test]
    fn a_config_file_without_soap_password_does_not_start() {
        let err = parse("[directory]\nfile = \"x.jsonl\"\n").expect_err("no password");
        assert!(err.to_string().contains("soap.password"), "{err}");
    }

    #[test]
    fn secrets_come_from_the_environment() {
        let env = |name: &str| match name {
            ENV_SOAP_PASSWORD => Some("from-env".to_string()),
            ENV_API_TOKEN => Some("api-from-env".to_string()),
            _ => None,
        };
        let c = Config::parse("[directory]\nfile = \"x\"\n", Path::new("gw.toml"), &env)
            .expect("env password");
        assert_eq!(
            c.soap.password.as_ref().map(Secret::expose),
            Some("from-env")
        );
        assert_eq!(
            c.api.token.as_ref().map(Secret::expose),
            Some("api-from-env")
        );
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let c = parse(MINIMAL).expect("config");
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn duplicate_operator_keys_are_refused() {
        let text = format!(
            "{MINIMAL}[[operator]]\nkey = \"k\"\ntoken = \"tttttttt1\"\n[[operator]]\nkey = \"k\"\ntoken = \"tttttttt2\"\n"
        );
        let err = parse(&text).expect_err("duplicate key");
        assert!(err.to_string().contains("operator[1].key"), "{err}");
    }

    #[test]
    fn sync_and_managers_have_defaults() {
        let c = parse(MINIMAL).expect("config");
        assert_eq!(c.sync.manager_precedence, MANAGER_SOURCES);
        assert!(c.managers.is_empty() && c.sync.systems().next().is_none());
        let c = parse(&format!(
            "{MINIMAL}[sync]\nmanager_precedence = [\"bitrix24\", \"onec\"]\n[sync.bitrix24]\ndedupe_key = \"inn\"\nlink_templates = {{ company = \"https://portal.example/crm/company/details/{{id}}/\" }}\n[sync.amocrm]\n[[manager]]\nextension = \"244\"\nname = \"Смирнова\"\nonec_user = \"a1\"\nbitrix24_user_id = \"17\"\n"
        ))
        .expect("config");
        assert_eq!(c.sync.manager_precedence, ["bitrix24", "onec"]);
        assert_eq!(c.sync.max_pending, DEFAULT_MAX_PENDING);
        let b24 = c.sync.system("bitrix24").expect("bitrix24");
        assert_eq!(b24.dedupe_key, DedupeKey::Inn);
        assert_eq!(
            c.sync.system("amocrm").map(|s| s.dedupe_key),
            Some(DedupeKey::InnKpp)
        );
        assert_eq!(
            b24.link("company", "29 19/?x").as_deref(),
            Some("https://portal.example/crm/company/details/29%2019%2F%3Fx/")
        );
        assert_eq!(b24.link("deal", "1"), None);
        // The runtime's keys default as documented.
        assert_eq!(b24.burst, None);
        assert_eq!(b24.window, None);
        assert_eq!(b24.retry_first, Duration::from_secs(1));
        assert_eq!(b24.retry_max, Duration::from_secs(300));
        assert_eq!(b24.timeout, Duration::from_secs(30));
        assert_eq!(b24.concurrency, 4);
        assert_eq!(b24.dead_after, Duration::from_secs(7 * 86_400));
        assert_eq!(b24.block_probe, Duration::from_secs(600));
        let tuned = parse(&format!(
            "{MINIMAL}[sync.bitrix24]\nburst = 250\nper_second = 5\nretry_first = \"10ms\"\nretry_max = \"100ms\"\ntimeout = \"5s\"\nconcurrency = 2\ndead_after = \"2d\"\nblock_probe = \"1s\"\n[sync.bpium]\nper_window = 100\nwindow = \"30s\"\n"
        ))
        .expect("config");
        let tuned_b24 = tuned.sync.system("bitrix24").expect("bitrix24");
        assert_eq!(
            (tuned_b24.burst, tuned_b24.per_second),
            (Some(250), Some(5.0))
        );
        assert_eq!(tuned_b24.retry_first, Duration::from_millis(10));
        assert_eq!(tuned_b24.retry_max, Duration::from_millis(100));
        assert_eq!(tuned_b24.timeout, Duration::from_secs(5));
        assert_eq!(tuned_b24.concurrency, 2);
        assert_eq!(tuned_b24.dead_after, Duration::from_secs(2 * 86_400));
        assert_eq!(tuned_b24.block_probe, Duration::from_secs(1));
        let bpium = tuned.sync.system("bpium").expect("bpium");
        assert_eq!(
            (bpium.per_window, bpium.window),
            (Some(100), Some(Duration::from_secs(30)))
        );
        let ids: Vec<_> = c.managers[0].user_ids().collect();
        assert_eq!(
            ids,
            [
                ("onec", "onec_user", "a1"),
                ("bitrix24", "bitrix24_user_id", "17")
            ]
        );
    }

    #[test]
    fn sync_onec_holds_the_writer_s_keys_beside_the_runtime_s() {
        let onec = "[onec]\nodata_url = \"http://1c/base/odata/standard.odata\"\n";
        let text = format!(
            "{MINIMAL}{onec}[sync.onec]\nper_second = 2\ndedupe_key = \"inn\"\nwrite_username = \"writer\"\nbank_bik_field = \"БИК\"\n[sync.onec.fields]\nkind = \"\"\ncomment = \"from {{source}}\"\n[sync.onec.kinds]\nphone = \"2b7a9c64-1f0e-4d6a-9a41-7c1e0d5b3a01\"\n"
        );
        let config = parse(&text).expect("[sync.onec] reads");
        let table = config.sync.system("onec").expect("[sync.onec]");
        assert_eq!(table.per_second, Some(2.0));
        assert_eq!(table.dedupe_key, DedupeKey::Inn);
        let w = &config.sync.onec;
        assert_eq!(w.write_username, "writer");
        assert_eq!(w.bank_bik_field, "БИК");
        assert_eq!(w.fields.kind, "");
        assert_eq!(w.fields.name, "Description");
        assert_eq!(w.fields.comment, "from {source}");
        assert_eq!(w.kinds.email, "EmailКонтрагента");
        // No password: writes are off.
        assert!(!w.writes_on());
        let env =
            |name: &str| (name == ENV_ONEC_WRITE_PASSWORD).then(|| "from-env-password".to_owned());
        let config = Config::parse(&text, Path::new("gw.toml"), &env).expect("reads");
        assert!(config.sync.onec.writes_on());
        assert!(!format!("{:?}", config.sync.onec).contains("from-env-password"));
        // Unknown keys are named, in either part.
        for bad in [
            "[sync.onec]\nwrite_user = \"x\"\n",
            "[sync.onec.fields]\nnam = \"x\"\n",
        ] {
            let err = parse(&format!("{MINIMAL}{onec}{bad}")).expect_err("unknown key");
            assert!(err.to_string().contains("unknown field"), "{err}");
        }
        // The writer speaks to [onec]'s base: not without it.
        let err = parse(&format!("{MINIMAL}[sync.onec]\n")).expect_err("no [onec]");
        assert!(err.to_string().contains("sync.onec"), "{err}");
    }

    #[test]
    fn onec_transport_is_odata_unless_pull_and_a_pull_lease_is_ten_minutes_unless_set() {
        let config = parse(&format!(
            "{MINIMAL}[onec]\nodata_url = \"http://1c/base/odata/standard.odata\"\n[sync.onec]\n"
        ))
        .expect("plain [sync.onec]");
        let onec = config.sync.system("onec").expect("[sync.onec]");
        assert_eq!(onec.transport(), OnecTransport::Odata);
        assert!(!onec.pulled());
        let config = parse(&format!(
            "{MINIMAL}[sync.onec]\ntransport = \"pull\"\nlease = \"2m\"\n"
        ))
        .expect("pull with a lease");
        let onec = config.sync.system("onec").expect("[sync.onec]");
        assert!(onec.pulled());
        assert_eq!(onec.lease(), Duration::from_secs(120));
        // Under pull no [onec] is needed: 1C fetches the rows itself.
        let config = parse(&format!("{MINIMAL}[sync.onec]\ntransport = \"pull\"\n")).expect("pull");
        let onec = config.sync.system("onec").expect("[sync.onec]");
        assert_eq!(onec.lease(), DEFAULT_LEASE);
    }

    #[test]
    fn a_sync_table_no_system_claims_is_named() {
        let config = parse(&format!("{MINIMAL}[sync.testcrm]\n[sync.bitrix24]\n"))
            .expect("any system name reads");
        assert!(config.check_sync_tables(&["testcrm"]).is_ok());
        let err = config
            .check_sync_tables(&[])
            .expect_err("testcrm unclaimed");
        let msg = err.to_string();
        assert!(
            msg.contains("gw.toml") && msg.contains("sync.testcrm"),
            "{msg}"
        );
    }

    #[test]
    fn bad_sync_and_manager_keys_stop_start_up_naming_key_and_file() {
        let manager =
            |extra: &str| format!("[[manager]]\nextension = \"244\"\nname = \"A\"\n{extra}");
        for (text, key) in [
            (
                "[sync]\nmanager_precedence = [\"onec\", \"sap\"]\n".to_owned(),
                "sync.manager_precedence",
            ),
            (
                "[sync]\nmanager_precedence = [\"onec\", \"onec\"]\n".to_owned(),
                "sync.manager_precedence",
            ),
            ("[sync.\"S A P\"]\n".to_owned(), "sync.S A P"),
            ("[sync]\nsap = 1\n".to_owned(), "sap = 1"),
            ("[sync.bitrix24]\nburst = 0\n".to_owned(), "sync.bitrix24.burst"),
            ("[sync.bitrix24]\nburst = -1\n".to_owned(), "burst"),
            (
                "[sync.bitrix24]\nper_second = 0.0\n".to_owned(),
                "sync.bitrix24.per_second",
            ),
            (
                "[sync.bitrix24]\nper_second = nan\n".to_owned(),
                "sync.bitrix24.per_second",
            ),
            (
                "[sync.bpium]\nper_window = 100\n".to_owned(),
                "sync.bpium.per_window",
            ),
            (
                "[sync.bpium]\nwindow = \"30s\"\n".to_owned(),
                "sync.bpium.window",
            ),
            (
                "[sync.bpium]\nper_window = 0\nwindow = \"30s\"\n".to_owned(),
                "sync.bpium.per_window",
            ),
            (
                "[sync.bpium]\nper_window = 100\nwindow = \"30 parsecs\"\n".to_owned(),
                "window",
            ),
            (
                "[sync.bpium]\nper_window = 100\nwindow = \"30s\"\nburst = 5\n".to_owned(),
                "sync.bpium.per_window",
            ),
            (
                "[sync.amocrm]\nretry_first = \"0s\"\n".to_owned(),
                "sync.amocrm.retry_first",
            ),
            (
                "[sync.amocrm]\nretry_first = \"10m\"\nretry_max = \"1m\"\n".to_owned(),
                "sync.amocrm.retry_max",
            ),
            (
                "[sync.amocrm]\ntimeout = \"0s\"\n".to_owned(),
                "sync.amocrm.timeout",
            ),
            (
                "[sync.amocrm]\nconcurrency = 0\n".to_owned(),
                "sync.amocrm.concurrency",
            ),
            (
                "[sync.amocrm]\ndead_after = \"0s\"\n".to_owned(),
                "sync.amocrm.dead_after",
            ),
            (
                "[sync.amocrm]\nblock_probe = \"0s\"\n".to_owned(),
                "sync.amocrm.block_probe",
            ),
            ("[sync.Sap]\n".to_owned(), "sync.Sap"),
            ("[sync]\nstray = 1\n".to_owned(), "stray"),
            ("[sync.bitrix24]\ndedupe = \"inn\"\n".to_owned(), "dedupe"),
            (
                "[sync.bitrix24]\ndedupe_key = \"kpp\"\n".to_owned(),
                "dedupe_key",
            ),
            (
                "[sync.bitrix24]\nlink_templates = { company = \"javascript:alert({id})\" }\n"
                    .to_owned(),
                "sync.bitrix24.link_templates.company",
            ),
            (
                "[sync.bitrix24]\nlink_templates = { company = \"https://portal/crm/\" }\n"
                    .to_owned(),
                "sync.bitrix24.link_templates.company",
            ),
            (
                "[sync.amocrm]\nlink_templates = { company = \"https:///{id}\" }\n".to_owned(),
                "sync.amocrm.link_templates.company",
            ),
            ("[sync]\nmax_pending = 0\n".to_owned(), "sync.max_pending"),
            (
                "[sync.bitrix24]\ntransport = \"pull\"\n".to_owned(),
                "sync.bitrix24.transport",
            ),
            ("[sync.onec]\ntransport = \"ftp\"\n".to_owned(), "transport"),
            (
                "[sync.onec]\nlease = \"5m\"\n".to_owned(),
                "sync.onec.lease",
            ),
            (
                "[sync.onec]\ntransport = \"pull\"\nlease = \"0s\"\n".to_owned(),
                "sync.onec.lease",
            ),
            (
                "[sync.amocrm]\nallow_from = [\"crm.example.ru\"]\n".to_owned(),
                "sync.amocrm.allow_from",
            ),
            (
                format!("{}{}", manager(""), manager("")),
                "manager[1].extension",
            ),
            (
                format!(
                    "{}[[manager]]\nextension = \"245\"\nname = \"B\"\nbitrix24_user_id = \"7\"\n",
                    manager("bitrix24_user_id = \"7\"\n")
                ),
                "manager[1].bitrix24_user_id",
            ),
            (
                "[[manager]]\nextension = \"24 4a\"\nname = \"A\"\n".to_owned(),
                "manager[0].extension",
            ),
            (manager("crm_user = \"1\"\n"), "crm_user"),
            (
                "[onec]\nodata_url = \"http://1c/odata\"\nmanager_ref_field = \"Ответственный/Key\"\n"
                    .to_owned(),
                "onec.manager_ref_field",
            ),
        ] {
            let err = parse(&format!("{MINIMAL}{text}")).expect_err(key);
            let msg = err.to_string();
            assert!(msg.contains("gw.toml") && msg.contains(key), "{key}: {msg}");
        }
        // The same user id in two systems is two people, not a clash.
        assert!(parse(&format!(
            "{MINIMAL}{}[[manager]]\nextension = \"245\"\nname = \"B\"\namocrm_user_id = \"7\"\n",
            manager("bitrix24_user_id = \"7\"\n")
        ))
        .is_ok());
    }

    #[test]
    fn screen_transport_timings_have_defaults_and_bounds() {
        let c = parse(MINIMAL).expect("config");
        assert_eq!(c.popup.ping_interval, Duration::from_secs(25));
        assert_eq!(c.popup.long_poll_max_wait, Duration::from_secs(60));
        for (key, value) in [
            ("ping_interval", "50ms"),
            ("ping_interval", "2h"),
            ("long_poll_max_wait", "0s"),
            ("long_poll_max_wait", "61s"),
        ] {
            let err = parse(&format!("{MINIMAL}[popup]\n{key} = \"{value}\"\n"))
                .expect_err("out of bounds");
            assert!(err.to_string().contains(&format!("popup.{key}")), "{err}");
        }
    }

    #[test]
    fn the_file_guard_keys_have_defaults_and_bounds() {
        let c = parse(MINIMAL).expect("config");
        assert_eq!(c.directory.settle, Duration::from_secs(2));
        assert_eq!(c.directory.max_shrink, 0.5);
        let with = |keys: &str| {
            parse(&MINIMAL.replace("[directory]\n", &format!("[directory]\n{keys}\n")))
        };
        let c = with("settle = \"0s\"\nmax_shrink = 1").expect("an integer 1 is a fraction");
        assert_eq!(c.directory.settle, Duration::ZERO);
        assert_eq!(c.directory.max_shrink, 1.0);
        for bad in [
            "max_shrink = 0",
            "max_shrink = 1.5",
            "max_shrink = 50",
            "max_shrink = -0.1",
            "max_shrink = nan",
        ] {
            let err = with(bad).expect_err(bad);
            assert!(
                err.to_string().contains("directory.max_shrink"),
                "{bad}: {err}"
            );
        }
        let err = with("max_shrink = \"50%\"").expect_err("a string");
        assert!(err.to_string().contains("max_shrink"), "{err}");
        let err = with("settle = \"2h\"").expect_err("too long");
        assert!(err.to_string().contains("directory.settle"), "{err}");
    }

    #[test]
    fn address_lists_take_networks_and_bare_addresses_of_both_families() {
        let c = parse(&format!(
            "{MINIMAL}[api]\nallow_from = [\"203.0.113.0/24\", \"198.51.100.7\", \"2001:db8::/32\", \"::1\"]\n"
        ))
        .expect("config");
        let list = &c.api.allow_from;
        let ip = |s: &str| s.parse::<IpAddr>().expect("address");
        assert!(list.contains(ip("203.0.113.200")));
        assert!(list.contains(ip("198.51.100.7")));
        assert!(!list.contains(ip("198.51.100.8")));
        assert!(list.contains(ip("2001:db8:1::5")));
        assert!(list.contains(ip("::1")));
        assert!(!list.contains(ip("127.0.0.1")));
        // As a dual-stack listener sees an IPv4 client.
        assert!(list.contains(ip("::ffff:203.0.113.9")));
        assert!(c.soap.allow_from.is_empty() && c.metrics.allow_from.is_empty());
    }

    #[test]
    fn a_bad_address_list_entry_is_named_with_its_key_and_the_file() {
        for (table, key) in [
            ("server", "trusted_proxies"),
            ("soap", "allow_from"),
            ("popup", "allow_from"),
            ("api", "allow_from"),
            ("metrics", "allow_from"),
        ] {
            let line = format!("{key} = [\"10.0.0.0/8\", \"pbx.example.ru\"]\n");
            let text = if table == "soap" {
                MINIMAL.replace("[soap]\n", &format!("[soap]\n{line}"))
            } else {
                format!("{MINIMAL}[{table}]\n{line}")
            };
            let err = parse(&text).expect_err("a host name");
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("{table}.{key}"))
                    && msg.contains("pbx.example.ru")
                    && msg.contains("gw.toml"),
                "{msg}"
            );
        }
        let list = AddressList::parse(["10.0.0.0/33"]);
        assert!(!list.is_valid() && !list.contains("10.0.0.1".parse().expect("ip")));
    }

    #[test]
    fn allowed_origins_are_kept_as_browsers_send_them_and_bad_ones_named() {
        let c = parse(MINIMAL).expect("config");
        assert!(c.popup.allowed_origins.is_empty());
        let c = parse(&format!(
            "{MINIMAL}[popup]\nallowed_origins = [\"HTTPS://CRM.Example.ru/\", \"http://10.0.0.5:8080\", \"https://[2001:DB8::1]:443\", \"http://intranet:80\"]\n"
        ))
        .expect("config");
        let list = &c.popup.allowed_origins;
        for origin in [
            "https://crm.example.ru",
            "http://10.0.0.5:8080",
            "https://[2001:db8::1]",
            "http://intranet",
        ] {
            assert!(list.contains(origin), "{origin}: {list:?}");
        }
        assert!(!list.contains("http://crm.example.ru"));
        for bad in [
            "crm.example.ru",
            "https://crm.example.ru/app",
            "ftp://crm.example.ru",
            "https://user@crm.example.ru",
            "https://*.example.ru",
            "https://crm.example.ru:99999",
            "https://crm.example.ru:",
            "null",
        ] {
            let err = parse(&format!(
                "{MINIMAL}[popup]\nallowed_origins = [\"{bad}\"]\n"
            ))
            .expect_err(bad);
            let msg = err.to_string();
            assert!(
                msg.contains("popup.allowed_origins") && msg.contains(&format!("{bad:?}")),
                "{bad}: {msg}"
            );
        }
        assert_eq!(normalize_origin("null"), None);
        assert_eq!(
            normalize_origin("https://GW.example:8443").as_deref(),
            Some("https://gw.example:8443")
        );
    }

    #[test]
    fn auth_throttling_keys_have_defaults_and_bounds() {
        let c = parse(MINIMAL).expect("config");
        assert_eq!(c.server.auth_failures_per_minute, 20);
        assert_eq!(c.server.auth_block, Duration::from_secs(300));
        for (key, value) in [
            ("auth_failures_per_minute", "0"),
            ("auth_block", "\"0s\""),
            ("auth_block", "\"2d\""),
        ] {
            let err = parse(&format!("{MINIMAL}[server]\n{key} = {value}\n")).expect_err(key);
            assert!(err.to_string().contains(&format!("server.{key}")), "{err}");
        }
    }

    #[test]
    fn connection_limit_keys_have_defaults_and_bounds() {
        let c = parse(MINIMAL).expect("config");
        assert_eq!(c.server.max_connections_per_address, 64);
        assert_eq!(c.server.reserved_connections, 32);
        assert_eq!(c.server.first_request_timeout, Duration::from_secs(5));
        let c = parse(&format!(
            "{MINIMAL}[server]\nfirst_request_timeout = \"300ms\"\nmax_connections = 8\n"
        ))
        .expect("reserved is not set aside without soap.allow_from");
        assert_eq!(c.server.first_request_timeout, Duration::from_millis(300));
        for (key, value) in [
            ("max_connections_per_address", "0"),
            ("first_request_timeout", "\"0s\""),
            ("first_request_timeout", "\"11m\""),
        ] {
            let err = parse(&format!("{MINIMAL}[server]\n{key} = {value}\n")).expect_err(key);
            assert!(err.to_string().contains(&format!("server.{key}")), "{err}");
        }
        let with_pbx = MINIMAL.replace("[soap]\n", "[soap]\nallow_from = [\"203.0.113.0/24\"]\n");
        let err = parse(&format!("{with_pbx}[server]\nmax_connections = 32\n"))
            .expect_err("every slot reserved");
        assert!(
            err.to_string().contains("server.reserved_connections"),
            "{err}"
        );
        assert!(parse(&format!("{with_pbx}[server]\nmax_connections = 33\n")).is_ok());
    }

    #[test]
    fn server_names_take_hosts_with_an_optional_port_only() {
        let c = parse(&format!(
            "{MINIMAL}[server]\nnames = [\"gw.corp.ru\", \"gw.corp.ru:8443\", \"203.0.113.5\", \"[2001:db8::1]:8080\"]\n"
        ))
        .expect("names");
        assert_eq!(c.server.names.len(), 4);
        for bad in [
            "",
            "gw.corp.ru@evil.example",
            "https://gw.corp.ru",
            "gw.corp.ru/x",
            "gw corp",
            "gw.corp.ru:",
            "gw.corp.ru:port",
            "2001:db8::1",
        ] {
            let err = parse(&format!("{MINIMAL}[server]\nnames = [{bad:?}]\n")).expect_err(bad);
            assert!(err.to_string().contains("server.names"), "{bad}: {err}");
        }
    }

    /// `config/example.toml` listening on `listen`, the secrets as they are.
    fn example_on(listen: &str) -> String {
        include_str!("../config/example.toml").replace(
            "listen = \"127.0.0.1:8080\"",
            &format!("listen = \"{listen}\""),
        )
    }

    #[test]
    fn every_secret_of_the_example_config_counts_as_published() {
        let c = parse(include_str!("../config/example.toml")).expect("example");
        let mut secrets = vec![c.soap.password.clone(), c.api.token.clone()];
        secrets.extend(c.operators.iter().map(|o| Some(o.token.clone())));
        for secret in secrets.into_iter().flatten() {
            assert!(
                PUBLISHED_SECRETS.contains(&secret.expose()),
                "config/example.toml has a secret PUBLISHED_SECRETS lacks"
            );
        }
    }

    #[test]
    fn published_or_short_secrets_stop_a_listener_other_machines_reach() {
        // On loopback the example runs as it is (tests and benches too).
        assert!(parse(&example_on("127.0.0.1:8080")).is_ok());
        assert!(parse(&example_on("[::1]:8080")).is_ok());
        let err = parse(&example_on("0.0.0.0:8080")).expect_err("published password");
        let msg = err.to_string();
        assert!(
            msg.contains("soap.password") && msg.contains("published"),
            "{msg}"
        );
        let long = "x".repeat(MIN_SECRET_CHARS);
        let text = example_on("0.0.0.0:8080").replace("\"change-me\"", &format!("\"{long}\""));
        let err = parse(&text).expect_err("published token");
        assert!(err.to_string().contains("api.token"), "{err}");
        let text = text.replace("\"change-me-too\"", &format!("\"{long}-api\""));
        let err = parse(&text).expect_err("published operator token");
        assert!(err.to_string().contains("operator[0].token"), "{err}");
        let text = text.replace("\"operator-token-1\"", "\"short-token-1\"");
        let err = parse(&text).expect_err("short operator token");
        let msg = err.to_string();
        assert!(
            msg.contains("operator[0].token") && msg.contains("shorter than 16"),
            "{msg}"
        );
        let text = text.replace("\"short-token-1\"", &format!("\"{long}-op\""));
        let c = parse(&text).expect("secrets of its own");
        // The demo values and the environment count the same.
        let mut demo = c.clone();
        demo.soap.password = Some(Secret::new(DEMO_SOAP_PASSWORD));
        assert!(demo.check_secrets().is_err());
        let env = |name: &str| (name == ENV_SOAP_PASSWORD).then(|| "123".to_owned());
        let err = Config::parse(&text, Path::new("gw.toml"), &env).expect_err("env");
        assert!(err.to_string().contains("CTI_SOAP_PASSWORD"), "{err}");
    }

    #[test]
    fn demo_mode_uses_the_seed_credentials() {
        let c = Config::demo(&no_env, Path::new("/tmp/demo"));
        assert_eq!(c.soap.username, "SOAP");
        assert_eq!(c.soap.password.as_ref().map(Secret::expose), Some("123"));
        assert_eq!(c.operators[0].key, DEMO_OPERATOR_KEY);
        assert_eq!(
            c.directory.file.as_deref(),
            Some(Path::new("/tmp/demo/counterparties.jsonl"))
        );
        assert_eq!(c.store.path, Path::new("/tmp/demo/cti-gateway.sqlite"));
    }

    #[test]
    fn the_demo_folder_is_never_the_current_directory() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let e = env(&[("CTI_DEMO_DIR", "/srv/demo"), ("HOME", "/home/a")]);
        assert_eq!(demo_folder(&e), Path::new("/srv/demo"));
        let e = env(&[("XDG_STATE_HOME", "/x/state"), ("HOME", "/home/a")]);
        assert_eq!(demo_folder(&e), Path::new("/x/state/cti-gateway/demo"));
        let e = env(&[("HOME", "/home/a")]);
        assert_eq!(
            demo_folder(&e),
            Path::new("/home/a/.local/state/cti-gateway/demo")
        );
        assert!(demo_folder(&no_env).is_absolute());
    }
}
