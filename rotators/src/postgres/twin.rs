//! Alternating-users strategy on PostgreSQL: the pair's second role (the twin).
//!
//! **Created** (through the admin login) as
//! `CREATE ROLE twin LOGIN INHERIT … PASSWORD '<SCRAM verifier>' IN ROLE primary`:
//! one statement, so a crash leaves either no twin or a complete one; the verifier is
//! computed here, the clear password never reaches the server. As in AWS's multi-user
//! rotation, the twin is a *member* of the primary: every privilege on objects, every
//! object the primary owns and every role the primary is in follow through inheritance,
//! now and after any later `GRANT … TO primary`, with nothing to copy or drift. What
//! membership does not carry is copied: the attributes `CREATEDB`, `CREATEROLE`,
//! `REPLICATION`, `BYPASSRLS`, `CONNECTION LIMIT` and `VALID UNTIL`. A superuser
//! primary is refused: kv-rotator does not mint superusers.
//!
//! **Repaired** at every call (adding only, in one transaction): the membership in the
//! primary, the attributes above the primary has and the twin lacks, and the connection
//! limit.
//!
//! **Reported** as drift, never changed: anything the twin has beyond the primary
//! (memberships, `CREATEDB`), a `NOINHERIT` twin (it would not use the primary's
//! privileges without `SET ROLE`, and changing that widens it through every membership),
//! a different `VALID UNTIL` (an operator's date), per-role settings
//! (`ALTER ROLE … SET`, compared and named without their values, which may be secrets:
//! membership does not carry them, and a list setting such as `search_path` cannot be
//! copied faithfully as SQL text), and
//! relations the twin owns in the profile's database (objects it creates are its own,
//! not the primary's: migrations should `SET ROLE` to the primary).
//!
//! **Refused** (permanent errors): primary and twin the same role, or the admin's; a
//! missing or `NOLOGIN` primary; a twin that is `NOLOGIN` or has members (a group role:
//! its members would inherit the primary) or holds `SUPERUSER`, `CREATEROLE`,
//! `REPLICATION` or `BYPASSRLS` the primary lacks (handing it to consumers would give
//! them more than the primary has, beyond anything a grant shows).

use secrecy::{ExposeSecret, SecretString};
use tokio_postgres::Client;

use super::{check_role_name, quote_ident, shown, PostgresRotator};
use crate::common::check_twin_pair;
use crate::scrub::Scrubber;
use crate::{RotatorError, RotatorResult, SyncTwinRequest, SyncTwinResponse};

/// Attributes that membership does not carry and the twin copies, in [`ROLE_SQL`]'s
/// column order.
const COPIED: [&str; 4] = ["CREATEDB", "CREATEROLE", "REPLICATION", "BYPASSRLS"];

/// Attributes that reach beyond grants: a twin holding one the primary lacks is refused.
const POWERFUL: [&str; 4] = ["SUPERUSER", "CREATEROLE", "REPLICATION", "BYPASSRLS"];

/// What `pg_roles` and the catalogs say of a role.
struct Role {
    superuser: bool,
    inherit: bool,
    login: bool,
    /// [`COPIED`]'s keywords the role has.
    attributes: Vec<&'static str>,
    connlimit: i32,
    /// `VALID UNTIL` as a SQL literal the server rendered (`quote_literal`), if set.
    valid_until: Option<String>,
    /// Roles it is a direct member of (`name` or `name WITH ADMIN OPTION`).
    member_of: Vec<String>,
    /// Roles directly in it.
    members: Vec<String>,
    /// `database: setting` of its `ALTER ROLE … SET` (`*` for every database), no values.
    settings: Vec<String>,
    /// Relations it owns in the current database.
    owned: i64,
}

const ROLE_SQL: &str = "SELECT r.rolsuper, r.rolinherit, r.rolcanlogin, r.rolcreatedb, r.rolcreaterole, \
       r.rolreplication, r.rolbypassrls, r.rolconnlimit, quote_literal(r.rolvaliduntil::text), \
       ARRAY(SELECT DISTINCT g.rolname::text || CASE WHEN m.admin_option THEN ' WITH ADMIN OPTION' ELSE '' END \
             FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid ORDER BY 1), \
       ARRAY(SELECT DISTINCT u.rolname::text FROM pg_auth_members m JOIN pg_roles u ON u.oid = m.member \
             WHERE m.roleid = r.oid ORDER BY 1), \
       ARRAY(SELECT DISTINCT coalesce(d.datname::text, '*') || ': ' || split_part(s, '=', 1) \
             FROM pg_db_role_setting rs LEFT JOIN pg_database d ON d.oid = rs.setdatabase, unnest(rs.setconfig) s \
             WHERE rs.setrole = r.oid ORDER BY 1), \
       (SELECT count(*) FROM pg_class c WHERE c.relowner = r.oid) \
       FROM pg_roles r WHERE r.rolname = $1";

/// [`crate::Rotator::sync_twin`] for PostgreSQL; see the [module docs](self).
pub(super) async fn sync(rotator: &PostgresRotator, req: SyncTwinRequest) -> RotatorResult<SyncTwinResponse> {
    check_twin_pair(&req, "role", check_role_name, shown)?;
    let (primary, twin) = (shown(&req.primary), shown(&req.twin));
    let verifier = SecretString::from(postgres_protocol::password::scram_sha_256(
        req.password_if_created.expose_secret().as_bytes(),
    ));
    let scrub = Scrubber::new([&req.password_if_created, &req.admin.password, &verifier]);
    let who = format!("admin {}", shown(&req.admin.username));
    let server = rotator.server();
    let Some(client) = rotator.login(&req.admin.username, &req.admin.password, &who, &scrub).await? else {
        return Err(RotatorError::Permanent(format!("{who} was refused on {server}: cannot sync the twin {twin}")));
    };

    let context = format!("reading roles {primary} and {twin} on {server} as {who}");
    let Some(p) = read_role(rotator, &client, &req.primary, &context, &scrub).await? else {
        return Err(RotatorError::Permanent(format!("{context}: role {primary} does not exist")));
    };
    if !p.login {
        return Err(RotatorError::Permanent(format!(
            "{context}: role {primary} cannot log in (NOLOGIN): not an application account"
        )));
    }
    let mut out = SyncTwinResponse::default();
    let (p_sql, t_sql) = (quote_ident(&req.primary), quote_ident(&req.twin));
    let Some(t) = read_role(rotator, &client, &req.twin, &context, &scrub).await? else {
        if p.superuser {
            return Err(RotatorError::Permanent(format!(
                "{context}: role {primary} is a superuser; kv-rotator does not create superusers: create {twin} \
                 yourself"
            )));
        }
        if req.password_if_created.expose_secret().is_empty() {
            return Err(RotatorError::Permanent(format!(
                "{context}: role {twin} does not exist, and no password was given to create it (it is the active \
                 account): it is not recreated, as no one would have its password"
            )));
        }
        // The verifier is base64 and `$:` only: nothing to escape inside '…'.
        let mut sql = format!("CREATE ROLE {t_sql} LOGIN INHERIT CONNECTION LIMIT {}", p.connlimit);
        for attribute in &p.attributes {
            sql.push(' ');
            sql.push_str(attribute);
        }
        if let Some(until) = &p.valid_until {
            sql.push_str(&format!(" VALID UNTIL {until}"));
        }
        sql.push_str(&format!(" PASSWORD '{}' IN ROLE {p_sql}", verifier.expose_secret()));
        let context = format!("creating role {twin} as a member of {primary} on {server} as {who}");
        rotator.execute(&client, &sql, &context, &scrub).await?;
        out.created = true;
        out.drift = settings_drift(&p, None, &primary, &twin);
        return Ok(out);
    };

    if !req.twin_known {
        return Err(RotatorError::Permanent(format!(
            "{context}: role {twin} exists, but this secret never used it: kv-rotator does not take over an \
             account it did not create (it may be someone else's); drop or rename it, or choose another twin_suffix"
        )));
    }
    let mut refusals = Vec::new();
    if !t.login {
        refusals.push(format!("{twin} cannot log in (NOLOGIN): a group role, not an account"));
    }
    if !t.members.is_empty() {
        refusals.push(format!(
            "{twin} has members ({}): a group role, whose members would inherit {primary}",
            t.members.iter().map(|m| shown(m)).collect::<Vec<_>>().join(", ")
        ));
    }
    let has = |r: &Role, keyword: &str| (keyword == "SUPERUSER" && r.superuser) || r.attributes.contains(&keyword);
    for keyword in POWERFUL {
        if has(&t, keyword) && !has(&p, keyword) {
            refusals.push(format!("{twin} has {keyword}, which {primary} lacks"));
        }
    }
    if !refusals.is_empty() {
        return Err(RotatorError::Permanent(format!(
            "{context}: refusing {twin} as the twin of {primary}: {}",
            refusals.join("; ")
        )));
    }

    let mut repairs = Vec::new();
    let in_primary =
        t.member_of.iter().any(|m| m == &req.primary || m == &format!("{} WITH ADMIN OPTION", req.primary));
    if !in_primary {
        repairs.push((format!("GRANT {p_sql} TO {t_sql}"), format!("granted membership in {primary} to {twin}")));
    }
    for keyword in p.attributes.iter().filter(|a| !t.attributes.contains(a)) {
        repairs.push((format!("ALTER ROLE {t_sql} {keyword}"), format!("gave {twin} {keyword}, as {primary} has")));
    }
    if t.connlimit != p.connlimit {
        repairs.push((
            format!("ALTER ROLE {t_sql} CONNECTION LIMIT {}", p.connlimit),
            format!("set the CONNECTION LIMIT of {twin} to {} (was {}), as {primary}'s", p.connlimit, t.connlimit),
        ));
    }
    if p.superuser && !t.superuser {
        out.drift.push(format!("{primary} is a superuser and {twin} is not (kv-rotator does not grant SUPERUSER)"));
    }
    for keyword in t.attributes.iter().filter(|a| !p.attributes.contains(a)) {
        out.drift.push(format!("{twin} has {keyword}, which {primary} lacks (not removed)"));
    }
    if !t.inherit {
        out.drift.push(format!(
            "{twin} is NOINHERIT: it uses {primary}'s privileges only after SET ROLE (not changed: INHERIT would \
             widen it through every role it is in)"
        ));
    }
    if t.valid_until != p.valid_until {
        let until = |v: &Option<String>| v.clone().unwrap_or_else(|| "none".to_owned());
        out.drift.push(format!(
            "VALID UNTIL differs: {primary} {}, {twin} {} (not changed: an operator's date)",
            until(&p.valid_until),
            until(&t.valid_until)
        ));
    }
    let primary_in = |m: &String| p.member_of.contains(m) || m.strip_suffix(" WITH ADMIN OPTION") == Some(&req.primary);
    for extra in t.member_of.iter().filter(|m| *m != &req.primary && !primary_in(m)) {
        out.drift.push(format!("{twin} is a member of {}, which {primary} is not (not revoked)", shown(extra)));
    }
    out.drift.extend(settings_drift(&p, Some(&t), &primary, &twin));
    if t.owned > 0 {
        out.drift.push(format!(
            "{twin} owns {} relation(s) in database {}: objects it creates are not {primary}'s (use SET ROLE {primary} \
             before creating objects)",
            t.owned,
            shown(&rotator.cfg.database)
        ));
    }

    if !repairs.is_empty() {
        let statements: Vec<&str> = repairs.iter().map(|(sql, _)| sql.as_str()).collect();
        let sql = format!("BEGIN; {}; COMMIT", statements.join("; "));
        let context = format!("repairing role {twin} on {server} as {who}");
        rotator.execute(&client, &sql, &context, &scrub).await?;
        out.repaired = repairs.into_iter().map(|(_, text)| text).collect();
    }
    Ok(out)
}

async fn read_role(
    rotator: &PostgresRotator,
    client: &Client,
    name: &str,
    context: &str,
    scrub: &Scrubber,
) -> RotatorResult<Option<Role>> {
    let rows = rotator.query(client, ROLE_SQL, &[&name], context, scrub).await?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let attributes =
        COPIED.iter().enumerate().filter(|(i, _)| row.get::<_, bool>(3 + i)).map(|(_, keyword)| *keyword).collect();
    Ok(Some(Role {
        superuser: row.get(0),
        inherit: row.get(1),
        login: row.get(2),
        attributes,
        connlimit: row.get(7),
        valid_until: row.get(8),
        member_of: row.get(9),
        members: row.get(10),
        settings: row.get(11),
        owned: row.get(12),
    }))
}

/// Per-role settings one role has and the other lacks, by name only (a value may be
/// anything, a secret included).
fn settings_drift(p: &Role, t: Option<&Role>, primary: &str, twin: &str) -> Vec<String> {
    let none = Vec::new();
    let t_settings = t.map_or(&none, |t| &t.settings);
    let mut drift: Vec<String> = p
        .settings
        .iter()
        .filter(|s| !t_settings.contains(s))
        .map(|s| format!("{primary} has setting {} (ALTER ROLE … SET), {twin} does not (not copied)", shown(s)))
        .collect();
    drift.extend(
        t_settings
            .iter()
            .filter(|s| !p.settings.contains(s))
            .map(|s| format!("{twin} has setting {}, {primary} does not (not removed)", shown(s))),
    );
    drift
}
