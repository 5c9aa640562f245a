//! Alternating-users strategy on MariaDB: the pair's second account (the twin).
//!
//! MariaDB has no membership that would make one account use another's privileges (a
//! role is not an account), so the twin gets **copies**: for each host entry of the
//! primary, `SHOW GRANTS FOR primary@host` is read, parsed (quotes and parentheses
//! respected), and replayed for `twin@host` — the grantee is the one name substituted,
//! quoted by [`quote_ident`]; objects and roles are replayed as the server printed them.
//! Copied: privileges at every level (global, database, table, column, routine, proxy),
//! `WITH GRANT OPTION`, granted roles (with `ADMIN OPTION`), the default role, and the
//! account options `SHOW GRANTS` prints on the global row (`REQUIRE SSL`/`X509`/…,
//! `MAX_…` resource limits). Not copied: account locking and password expiry.
//!
//! **Created** with `CREATE USER twin@h1 IDENTIFIED BY PASSWORD '*…', twin@h2 …` naming
//! every host entry the primary has: only the `mysql_native_password` hash is sent.
//! MariaDB 10.11 does not make that statement atomic (entries before a failing one
//! stay), so every call also **repairs** a twin missing a host entry: created with the
//! twin's existing hash, so it logs in the same through every entry (if its entries
//! disagree — a password change cut short — the entry is left for the next rotation
//! and reported). Privileges, roles, the default role and account options the primary
//! has and the twin lacks are repaired by granting them (adding only; account options
//! by `ALTER USER`, which needs only `CREATE USER`). A crash anywhere leaves a state the
//! next call completes. The default role is set when the admin may: `SET DEFAULT ROLE
//! … FOR` another account takes `UPDATE` on all of `mysql.*`, more than an admin should
//! hold, so without it a missing default role is reported.
//!
//! **Reported** as drift, never revoked: privileges and roles the twin has beyond the
//! primary, a host entry only the twin has, a default role only the twin has, account
//! options that differ where the twin has its own (replaying the primary's could loosen
//! them).
//!
//! **Refused** (permanent errors): primary and twin the same account, or the admin's; a
//! primary or twin that is a role, or not on `mysql_native_password`; a missing primary;
//! a twin holding, on `*.*`, an administrative privilege the primary lacks (`SUPER`,
//! `ALL PRIVILEGES`, `CREATE USER`, `GRANT OPTION`, …): consumers would get more than the
//! primary has.
//!
//! The admin needs `SELECT` on `mysql.*` (`SHOW GRANTS FOR` another account),
//! `CREATE USER`, and every privilege it copies `WITH GRANT OPTION` (roles: `WITH ADMIN
//! OPTION`).

use std::collections::{BTreeMap, BTreeSet};

use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};

use super::{
    check_user_name, disconnect, escape_controls, native_hash, quote_ident, shown, MariaDbRotator, NATIVE_PLUGIN,
};
use crate::common::check_twin_pair;
use crate::scrub::Scrubber;
use crate::{RotatorError, RotatorResult, SyncTwinRequest, SyncTwinResponse};

/// Global privileges that administer the server: a twin holding one the primary lacks
/// is refused rather than handed to consumers.
const ADMINISTRATIVE: [&str; 12] = [
    "ALL PRIVILEGES",
    "SUPER",
    "CREATE USER",
    "GRANT OPTION",
    "FILE",
    "SHUTDOWN",
    "PROCESS",
    "RELOAD",
    "SET USER",
    "CONNECTION ADMIN",
    "READ_ONLY ADMIN",
    "BINLOG ADMIN",
];

/// What `SHOW GRANTS FOR` one host entry says, the grantee taken out.
#[derive(Debug, Default, PartialEq, Eq)]
struct Grants {
    /// Object (`*.*`, `` `db`.* ``, `PROCEDURE `db`.`p` ``…) → privileges, one by one
    /// (`SELECT (`col`)` per column), `GRANT OPTION` among them; `USAGE` left out.
    privileges: BTreeMap<String, BTreeSet<String>>,
    /// The global row's account options: `REQUIRE …` and `WITH MAX_…` (no grant option).
    options: String,
    /// Granted roles (as printed, quoted) → with `ADMIN OPTION`.
    roles: BTreeMap<String, bool>,
    default_role: Option<String>,
}

/// [`crate::Rotator::sync_twin`] for MariaDB; see the [module docs](self).
pub(super) async fn sync(rotator: &MariaDbRotator, req: SyncTwinRequest) -> RotatorResult<SyncTwinResponse> {
    check_twin_pair(&req, "account", check_user_name, shown)?;
    let twin = shown(&req.twin);
    let created_hash = SecretString::from(native_hash(&req.password_if_created).to_string());
    let scrub = Scrubber::new([&req.password_if_created, &req.admin.password, &created_hash]);
    let who = format!("admin {}", shown(&req.admin.username));
    let Some(mut session) = rotator.login(&req.admin.username, &req.admin.password, &who, &scrub).await? else {
        return Err(RotatorError::Permanent(format!(
            "{who} was refused on {}: cannot sync the twin {twin}",
            rotator.server()
        )));
    };
    let result = Sync { rotator, req: &req, who: &who, scrub }.run(&mut session.conn, &created_hash).await;
    disconnect(session.conn).await;
    result
}

struct Sync<'a> {
    rotator: &'a MariaDbRotator,
    req: &'a SyncTwinRequest,
    who: &'a str,
    scrub: Scrubber,
}

impl Sync<'_> {
    fn context(&self, what: &str) -> String {
        format!("{what} on {} as {}", self.rotator.server(), self.who)
    }

    fn account(&self, user: &str, host: &str) -> String {
        format!("{}@{}", shown(user), shown(host))
    }

    async fn run(mut self, conn: &mut Conn, created_hash: &SecretString) -> RotatorResult<SyncTwinResponse> {
        let req = self.req;
        let (primary, twin) = (shown(&req.primary), shown(&req.twin));
        let context = self.context(&format!("reading the accounts {primary} and {twin}"));
        let sql = "SELECT User FROM mysql.user WHERE User IN (?, ?) AND is_role = 'Y'";
        let roles: Vec<String> = self
            .rotator
            .run(conn, &context, &self.scrub, |c| c.exec(sql, (req.primary.clone(), req.twin.clone())))
            .await?;
        if let Some(role) = roles.first() {
            return Err(RotatorError::Permanent(format!("{context}: {} is a role, not an account", shown(role))));
        }
        let insufficient = || {
            RotatorError::Permanent(format!(
                "{context}: insufficient privilege (the admin needs SELECT on mysql.user, and CREATE USER)"
            ))
        };
        let p_entries =
            self.rotator.entries(conn, &req.primary, true, &context, &self.scrub).await?.ok_or_else(insufficient)?;
        let t_entries =
            self.rotator.entries(conn, &req.twin, true, &context, &self.scrub).await?.ok_or_else(insufficient)?;
        if p_entries.is_empty() {
            return Err(RotatorError::Permanent(format!("{context}: account {primary} does not exist")));
        }
        for (user, entry) in p_entries.iter().map(|e| (&req.primary, e)).chain(t_entries.iter().map(|e| (&req.twin, e)))
        {
            if entry.plugin != NATIVE_PLUGIN {
                return Err(RotatorError::Permanent(format!(
                    "{context}: entry {} uses plugin {:?}; the pair must be {NATIVE_PLUGIN} accounts",
                    self.account(user, &entry.host),
                    entry.plugin
                )));
            }
        }
        // The stored hashes are secrets too, and SHOW GRANTS prints them.
        let hashes: Vec<SecretString> =
            p_entries.iter().chain(&t_entries).map(|e| SecretString::from(e.auth.to_string())).collect();
        self.scrub = Scrubber::new(self.scrub.secrets().chain(&hashes));

        if !t_entries.is_empty() && !req.twin_known {
            return Err(RotatorError::Permanent(format!(
                "account {} exists, but this secret never used it: kv-rotator does not take over an account it did \
                 not create (it may be someone else's); drop or rename it, or choose another twin_suffix",
                shown(&req.twin)
            )));
        }
        let mut out = SyncTwinResponse::default();
        let t_hosts: BTreeSet<&str> = t_entries.iter().map(|e| e.host.as_str()).collect();
        let p_hosts: BTreeSet<&str> = p_entries.iter().map(|e| e.host.as_str()).collect();
        for host in t_hosts.difference(&p_hosts) {
            out.drift.push(format!(
                "{} exists and {} does not (not dropped)",
                self.account(&req.twin, host),
                self.account(&req.primary, host)
            ));
        }
        let missing: Vec<&str> = p_hosts.difference(&t_hosts).copied().collect();
        let twin_hashes: BTreeSet<&str> = t_entries.iter().map(|e| e.auth.as_str()).collect();
        // The hash new entries get: the password being created with, or the twin's own.
        let new_hash: Option<Zeroizing<String>> = match twin_hashes.len() {
            0 => {
                if req.password_if_created.expose_secret().is_empty() {
                    return Err(RotatorError::Permanent(format!(
                        "account {} does not exist, and no password was given to create it (it is the active \
                         account): it is not recreated, as no one would have its password",
                        shown(&req.twin)
                    )));
                }
                out.created = true;
                Some(Zeroizing::new(created_hash.expose_secret().to_owned()))
            }
            1 => twin_hashes.first().map(|h| Zeroizing::new((*h).to_owned())),
            _ => {
                if !missing.is_empty() {
                    out.drift.push(format!(
                        "{twin} lacks host entries {}, not created now: its entries have different passwords (a \
                         password change cut short; the next rotation sets them all)",
                        missing.iter().map(|h| shown(h)).collect::<Vec<_>>().join(", ")
                    ));
                }
                None
            }
        };
        let to_create: Vec<&str> = if new_hash.is_some() { missing } else { Vec::new() };

        // Read and compare everything first: a refusal changes nothing.
        // Each statement with what it does, for the report and for its error.
        let mut statements: Vec<(Zeroizing<String>, String)> = Vec::new();
        let mut default_roles = Vec::new();
        let mut refusals = Vec::new();
        for host in p_hosts.iter().filter(|h| t_hosts.contains(*h) || to_create.contains(*h)) {
            let p = self.grants(conn, &req.primary, host).await?;
            let t =
                if to_create.contains(host) { Grants::default() } else { self.grants(conn, &req.twin, host).await? };
            let (p_account, t_account) = (self.account(&req.primary, host), self.account(&req.twin, host));
            let grantee = format!("{}@{}", quote_ident(&req.twin), quote_ident(host));
            let no_privileges = BTreeSet::new();
            for (on, p_privileges) in &p.privileges {
                let t_privileges = t.privileges.get(on).unwrap_or(&no_privileges);
                let lacking: Vec<&String> = p_privileges.difference(t_privileges).collect();
                if !lacking.is_empty() {
                    let text =
                        format!("granted {} ON {} to {t_account}", privilege_list(&lacking), escape_controls(on));
                    statements.push((Zeroizing::new(grant_sql(&lacking, on, &grantee)), text));
                }
            }
            for (on, t_privileges) in &t.privileges {
                let p_privileges = p.privileges.get(on).unwrap_or(&no_privileges);
                let extra: Vec<&String> = t_privileges.difference(p_privileges).collect();
                if extra.is_empty() {
                    continue;
                }
                let text = format!(
                    "{t_account} has {} ON {}, which {p_account} lacks",
                    privilege_list(&extra),
                    escape_controls(on)
                );
                if on == "*.*" && extra.iter().any(|e| ADMINISTRATIVE.contains(&e.as_str())) {
                    refusals.push(text);
                } else {
                    out.drift.push(format!("{text} (not revoked)"));
                }
            }
            if p.options != t.options {
                if t.options.is_empty() {
                    // ALTER USER takes the same clauses and needs only CREATE USER.
                    let sql = format!("ALTER USER {grantee} {}", p.options);
                    let text = format!("gave {t_account} the account options {}", escape_controls(&p.options));
                    statements.push((Zeroizing::new(sql), text));
                } else {
                    out.drift.push(format!(
                        "account options differ: {p_account} {:?}, {t_account} {:?} (not changed)",
                        escape_controls(&p.options),
                        escape_controls(&t.options)
                    ));
                }
            }
            for (role, &admin) in &p.roles {
                if t.roles.get(role).is_some_and(|&t_admin| t_admin || !admin) {
                    continue;
                }
                let with = if admin { " WITH ADMIN OPTION" } else { "" };
                let text = format!("granted role {}{with} to {t_account}", escape_controls(role));
                statements.push((Zeroizing::new(format!("GRANT {role} TO {grantee}{with}")), text));
            }
            for (role, &admin) in &t.roles {
                if p.roles.get(role).is_some_and(|&p_admin| p_admin || !admin) {
                    continue;
                }
                let with = if admin { " WITH ADMIN OPTION" } else { "" };
                out.drift.push(format!(
                    "{t_account} has role {}{with}, which {p_account} lacks (not revoked)",
                    escape_controls(role)
                ));
            }
            match (&p.default_role, &t.default_role) {
                (Some(role), t_role) if t_role.as_ref() != Some(role) => {
                    let text = format!("set the default role of {t_account} to {}", escape_controls(role));
                    default_roles.push((Zeroizing::new(format!("SET DEFAULT ROLE {role} FOR {grantee}")), text));
                }
                (None, Some(role)) => out.drift.push(format!(
                    "{t_account} has default role {}, {p_account} none (not changed)",
                    escape_controls(role)
                )),
                _ => {}
            }
        }
        if !refusals.is_empty() {
            return Err(RotatorError::Permanent(format!(
                "{}: refusing {twin} as the twin of {primary}: {}",
                self.context("comparing the accounts"),
                refusals.join("; ")
            )));
        }

        if let Some(hash) = new_hash.filter(|_| !to_create.is_empty()) {
            let entries: Vec<String> = to_create
                .iter()
                .map(|host| {
                    format!(
                        "{}@{} IDENTIFIED BY PASSWORD '{}'",
                        quote_ident(&req.twin),
                        quote_ident(host),
                        hash.as_str()
                    )
                })
                .collect();
            let text = format!(
                "created host entries {} of {twin}, with {}",
                to_create.iter().map(|h| shown(h)).collect::<Vec<_>>().join(", "),
                if out.created { "the password given" } else { "its password" }
            );
            statements.insert(0, (Zeroizing::new(format!("CREATE USER {}", entries.join(", "))), text));
        }
        for (sql, text) in statements {
            let context = self.context(&format!("syncing {twin} with {primary} ({text})"));
            self.rotator.run(conn, &context, &self.scrub, |c| c.query_drop(sql.as_str())).await?;
            // Creation copies everything: only an existing twin reports repairs.
            if !out.created {
                out.repaired.push(text);
            }
        }
        // SET DEFAULT ROLE … FOR another account takes UPDATE on the whole `mysql`
        // database, more than an admin should hold: without it, reported.
        for (sql, text) in default_roles {
            let context = self.context(&format!("syncing {twin} with {primary} ({text})"));
            match self.rotator.run(conn, &context, &self.scrub, |c| c.query_drop(sql.as_str())).await {
                Ok(()) => out.repaired.push(text),
                Err(RotatorError::Permanent(e)) if e.contains("insufficient privilege") => out.drift.push(format!(
                    "not done: {text} (the admin needs UPDATE on mysql.* to set another account's default role)"
                )),
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// `SHOW GRANTS FOR user@host`, parsed.
    async fn grants(&self, conn: &mut Conn, user: &str, host: &str) -> RotatorResult<Grants> {
        let grantee = format!("{}@{}", quote_ident(user), quote_ident(host));
        let context = self.context(&format!("reading the grants of {}", self.account(user, host)));
        let sql = format!("SHOW GRANTS FOR {grantee}");
        let rows: Vec<String> = self.rotator.run(conn, &context, &self.scrub, |c| c.query(sql)).await?;
        let rows: Vec<Zeroizing<String>> = rows.into_iter().map(Zeroizing::new).collect();
        parse_grants(&rows, &grantee)
            .map_err(|why| RotatorError::Permanent(format!("{context}: {}", self.scrub.clean(why))))
    }
}

/// `privileges` for a message, `GRANT OPTION` included.
fn privilege_list(privileges: &[&String]) -> String {
    escape_controls(&privileges.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", "))
}

/// `GRANT <privileges> ON <on> TO <grantee>`, column privileges regrouped
/// (`SELECT (`a`, `b`)`), `GRANT OPTION` as `WITH GRANT OPTION`.
fn grant_sql(privileges: &[&String], on: &str, grantee: &str) -> String {
    let mut plain: Vec<String> = Vec::new();
    let mut columns: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut grant_option = false;
    for privilege in privileges {
        if privilege.as_str() == "GRANT OPTION" {
            grant_option = true;
        } else if let Some((name, column)) = privilege.split_once(" (") {
            columns.entry(name).or_default().push(column.strip_suffix(')').unwrap_or(column));
        } else {
            plain.push(privilege.to_string());
        }
    }
    plain.extend(columns.into_iter().map(|(name, cols)| format!("{name} ({})", cols.join(", "))));
    if plain.is_empty() {
        plain.push("USAGE".to_owned());
    }
    let with = if grant_option { " WITH GRANT OPTION" } else { "" };
    format!("GRANT {} ON {on} TO {grantee}{with}", plain.join(", "))
}

/// Byte offsets of `text` that are outside backtick identifiers, '…' strings and
/// parentheses.
fn top_level(text: &str) -> Vec<bool> {
    let mut top = vec![false; text.len()];
    let (mut tick, mut quote, mut escaped, mut depth) = (false, false, false, 0usize);
    for (i, c) in text.char_indices() {
        if quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '\'' {
                quote = false;
            }
            continue;
        }
        if tick {
            tick = c != '`';
            continue;
        }
        match c {
            '`' => tick = true,
            '\'' => quote = true,
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            _ if depth == 0 => top[i] = true,
            _ => {}
        }
    }
    top
}

/// The first top-level occurrence of `pattern` (which starts with a space) in `text`.
fn find_top(text: &str, pattern: &str) -> Option<usize> {
    let top = top_level(text);
    text.match_indices(pattern).map(|(i, _)| i).find(|&i| top[i])
}

/// `text` split at top-level occurrences of `separator` (which starts with a space or
/// a comma).
fn split_top<'t>(text: &'t str, separator: &str) -> Vec<&'t str> {
    let top = top_level(text);
    let mut parts = Vec::new();
    let mut start = 0;
    for (i, _) in text.match_indices(separator) {
        if i >= start && top[i] {
            parts.push(&text[start..i]);
            start = i + separator.len();
        }
    }
    parts.push(&text[start..]);
    parts
}

/// Parses `SHOW GRANTS FOR <grantee>`. Errors never hold a row (they may hold a hash).
fn parse_grants(rows: &[Zeroizing<String>], grantee: &str) -> Result<Grants, String> {
    let mut grants = Grants::default();
    let unexpected = |what: &str| format!("unexpected SHOW GRANTS row ({what})");
    for row in rows {
        if let Some(rest) = row.strip_prefix("SET DEFAULT ROLE ") {
            let role = rest.strip_suffix(&format!(" FOR {grantee}")).ok_or_else(|| unexpected("default role"))?;
            grants.default_role = Some(role.to_owned());
            continue;
        }
        let body = row.strip_prefix("GRANT ").ok_or_else(|| unexpected("neither GRANT nor SET DEFAULT ROLE"))?;
        let to = find_top(body, " TO ").ok_or_else(|| unexpected("no TO"))?;
        let (head, tail) = (&body[..to], &body[to + 4..]);
        let tail = tail.strip_prefix(grantee).ok_or_else(|| unexpected("another grantee"))?;
        let Some(on) = find_top(head, " ON ") else {
            // A role: `GRANT `r` TO … [WITH ADMIN OPTION]`.
            let admin = match tail {
                "" => false,
                " WITH ADMIN OPTION" => true,
                _ => return Err(unexpected("role grant")),
            };
            if !head.starts_with('`') {
                return Err(unexpected("role name"));
            }
            grants.roles.insert(head.to_owned(), admin);
            continue;
        };
        let (list, object) = (&head[..on], &head[on + 4..]);
        let mut words: Vec<&str> = split_top(tail.trim_start(), " ").into_iter().filter(|w| !w.is_empty()).collect();
        // The account's hash: left out of everything kept.
        if let Some(at) = words.windows(3).position(|w| w == ["IDENTIFIED", "BY", "PASSWORD"]) {
            if words.get(at + 3).is_none_or(|hash| !hash.starts_with('\'')) {
                return Err(unexpected("IDENTIFIED BY PASSWORD without a hash"));
            }
            words.drain(at..at + 4);
        }
        if words.iter().any(|w| w.eq_ignore_ascii_case("IDENTIFIED") || w.eq_ignore_ascii_case("PASSWORD")) {
            return Err(unexpected("another authentication"));
        }
        let mut grant_option = false;
        if let Some(with) = words.iter().position(|w| *w == "WITH") {
            if words[with + 1..].starts_with(&["GRANT", "OPTION"]) {
                grant_option = true;
                words.drain(with + 1..with + 3);
            }
            if with + 1 == words.len() {
                words.pop();
            }
        }
        let options = words.join(" ");
        if object != "*.*" && !options.is_empty() {
            return Err(unexpected("account options on an object"));
        }
        let privileges = grants.privileges.entry(object.to_owned()).or_default();
        for privilege in split_top(list, ", ") {
            match privilege.split_once(" (") {
                Some((name, columns)) => {
                    let columns = columns.strip_suffix(')').ok_or_else(|| unexpected("column list"))?;
                    privileges.extend(split_top(columns, ", ").into_iter().map(|c| format!("{name} ({c})")));
                }
                None if privilege == "USAGE" => {}
                None => {
                    privileges.insert(privilege.to_owned());
                }
            }
        }
        if grant_option {
            privileges.insert("GRANT OPTION".to_owned());
        }
        if privileges.is_empty() {
            grants.privileges.remove(object);
        }
        if object == "*.*" {
            grants.options = options;
        }
    }
    Ok(grants)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(rows: &[&str]) -> Vec<Zeroizing<String>> {
        rows.iter().map(|r| Zeroizing::new((*r).to_owned())).collect()
    }

    #[test]
    fn show_grants_rows_parse_without_the_hash() {
        let grantee = "`app`@`%`";
        let g = parse_grants(
            &rows(&[
                "GRANT `r 1` TO `app`@`%`",
                "GRANT `adm` TO `app`@`%` WITH ADMIN OPTION",
                "GRANT USAGE ON *.* TO `app`@`%` IDENTIFIED BY PASSWORD '*2B60' REQUIRE SSL WITH GRANT OPTION \
                 MAX_QUERIES_PER_HOUR 7",
                "GRANT SELECT, INSERT ON `test`.* TO `app`@`%` WITH GRANT OPTION",
                "GRANT SELECT (`Host`, `User`), INSERT (`Host`) ON `my TO x`.`user` TO `app`@`%`",
                "SET DEFAULT ROLE `r 1` FOR `app`@`%`",
            ]),
            grantee,
        )
        .unwrap();
        assert_eq!(g.options, "REQUIRE SSL WITH MAX_QUERIES_PER_HOUR 7");
        assert_eq!(g.privileges["*.*"], BTreeSet::from(["GRANT OPTION".to_owned()]));
        assert_eq!(g.privileges["`test`.*"].len(), 3);
        let cols: Vec<&String> = g.privileges["`my TO x`.`user`"].iter().collect();
        assert_eq!(cols, ["INSERT (`Host`)", "SELECT (`Host`)", "SELECT (`User`)"]);
        assert_eq!(g.roles, BTreeMap::from([("`adm`".to_owned(), true), ("`r 1`".to_owned(), false)]));
        assert_eq!(g.default_role.as_deref(), Some("`r 1`"));
        assert!(!format!("{g:?}").contains("2B60"));

        let sql = grant_sql(&cols, "`db`.`t`", "`twin`@`%`");
        assert_eq!(sql, "GRANT INSERT (`Host`), SELECT (`Host`, `User`) ON `db`.`t` TO `twin`@`%`");
        let go = "GRANT OPTION".to_owned();
        assert_eq!(grant_sql(&[&go], "`db`.*", "`t`@`h`"), "GRANT USAGE ON `db`.* TO `t`@`h` WITH GRANT OPTION");
    }

    #[test]
    fn rows_for_another_grantee_or_another_plugin_are_refused_without_showing_them() {
        let e = parse_grants(&rows(&["GRANT SELECT ON *.* TO `other`@`%`"]), "`app`@`%`").unwrap_err();
        assert!(e.contains("another grantee"), "{e}");
        let row = "GRANT USAGE ON *.* TO `app`@`%` IDENTIFIED VIA ed25519 USING 'secret-ish'";
        let e = parse_grants(&rows(&[row]), "`app`@`%`").unwrap_err();
        assert!(e.contains("another authentication") && !e.contains("secret-ish"), "{e}");
        // A quoted name holding " TO " is not where the grantee starts.
        let g = parse_grants(&rows(&["GRANT SELECT ON `a TO b`.* TO `app`@`%`"]), "`app`@`%`").unwrap();
        assert!(g.privileges.contains_key("`a TO b`.*"));
    }
}
