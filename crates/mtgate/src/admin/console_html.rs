//! The console's pages: plain HTML, every value escaped, edit controls
//! only for the roles that may use them (the control plane refuses the
//! others anyway).

use crate::control::{Control, ControlError, Principal, Role};
use std::fmt::Write;

/// At most this many users are listed on the dashboard.
const MAX_LISTED: usize = 500;

/// The one-line message of the last change.
pub struct Flash<'a> {
    pub msg: Option<&'a str>,
    pub err: Option<&'a str>,
}

/// `s` escaped for HTML text and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font:15px/1.45 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1c1e21}\
header{background:#1f2937;color:#fff;padding:.7em 1.2em;display:flex;justify-content:space-between;align-items:center}\
header a{color:#fff}main{padding:1em 1.2em;max-width:72em}section{background:#fff;border:1px solid #dde;\
border-radius:6px;padding:.6em 1em;margin:0 0 1em}table{border-collapse:collapse;width:100%}\
td,th{text-align:left;padding:.25em .5em;border-bottom:1px solid #eee;vertical-align:top}\
code{font-size:13px;word-break:break-all}.msg{background:#e7f6e7;padding:.5em 1em}\
.err{background:#fde8e8;padding:.5em 1em}form.inline{display:inline}button{cursor:pointer}";

fn shell(title: &str, who: Option<(&Principal, &str)>, flash: &Flash<'_>, body: &str) -> String {
    let mut out = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>{} · mtgate</title>\
         <style>{STYLE}</style></head><body><header><a href=\"/console\"><b>mtgate</b> console</a>",
        esc(title)
    );
    if let Some((p, csrf)) = who {
        let _ = write!(
            out,
            "<span>signed in as <b id=\"who\">{}</b> ({}) <form class=\"inline\" method=\"post\" \
             action=\"/console/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <button id=\"sign-out\">Sign out</button></form></span>",
            esc(&p.name),
            p.role.name()
        );
    }
    out.push_str("</header>");
    if let Some(m) = flash.msg {
        let _ = write!(out, "<p class=\"msg\" role=\"status\">{}</p>", esc(m));
    }
    if let Some(e) = flash.err {
        let _ = write!(out, "<p class=\"err\" role=\"alert\">{}</p>", esc(e));
    }
    let _ = write!(out, "<main>{body}</main></body></html>");
    out
}

/// The sign-in page.
pub fn login(msg: Option<&str>, err: Option<&str>) -> String {
    shell(
        "Sign in",
        None,
        &Flash { msg, err },
        "<section><h1>Sign in</h1><form method=\"post\" action=\"/console/login\">\
         <label>Admin token <input type=\"password\" name=\"token\" id=\"token\" autocomplete=\"off\" \
         required size=\"48\"></label> <button id=\"sign-in\">Sign in</button></form>\
         <p>A token of the admin API (<code>admin.token</code> or one made with \
         <code>POST /api/v1/tokens</code>). It opens a 15-minute session for this address.</p></section>",
    )
}

/// A page saying what went wrong.
pub fn error_page(msg: &str) -> String {
    shell(
        "Error",
        None,
        &Flash {
            msg: None,
            err: Some(msg),
        },
        "<p><a href=\"/console\">Back to the console</a></p>",
    )
}

fn hidden(csrf: &str, name: &str, value: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"{name}\" value=\"{}\">",
        esc(value)
    )
}

fn when(ts: Option<u64>) -> String {
    ts.and_then(|t| i64::try_from(t).ok())
        .map_or_else(|| "—".into(), crate::civil::format_date)
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / 1_048_576.0)
}

/// The dashboard: users, rules and blocks, recent audit entries.
pub fn dashboard(control: &Control, p: &Principal, csrf: &str, flash: &Flash<'_>) -> String {
    let mut b = String::new();
    // Users.
    let users = control.users(p).unwrap_or_default();
    let _ = write!(
        b,
        "<section id=\"users\"><h2>Users ({})</h2><table><tr><th>name</th><th>defined in</th>\
         <th>state</th><th>modes</th><th>connections</th><th>traffic up / down</th></tr>",
        users.len()
    );
    for u in users.iter().take(MAX_LISTED) {
        let _ = write!(
            b,
            "<tr><td><a href=\"/console/users/{n}\">{n}</a></td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{} / {}</td></tr>",
            u.source.name(),
            if u.enabled { "enabled" } else { "disabled" },
            u.modes.join(", "),
            u.connections,
            mib(u.bytes_up),
            mib(u.bytes_down),
            n = esc(&u.name),
        );
    }
    b.push_str("</table>");
    if users.len() > MAX_LISTED {
        let _ = write!(
            b,
            "<p>The first {MAX_LISTED} are listed; the API lists all.</p>"
        );
    }
    if p.role >= Role::Standard {
        let _ = write!(
            b,
            "<h3>Add a user</h3><form id=\"add-user\" method=\"post\" action=\"/console/users\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <label>Name <input name=\"name\" id=\"new-user\" required pattern=\"[A-Za-z0-9._\\-]{{1,64}}\"></label> \
             <label><input type=\"checkbox\" name=\"ee\" checked> ee</label> \
             <label><input type=\"checkbox\" name=\"dd\" checked> dd</label> \
             <label><input type=\"checkbox\" name=\"classic\"> classic</label> \
             <button id=\"create-user\">Create</button></form>"
        );
    }
    b.push_str("</section>");
    // Rules and blocks (admin).
    if p.role >= Role::Admin {
        let rules = control.rules(p).unwrap_or_default();
        b.push_str(
            "<section id=\"rules\"><h2>Access rules</h2><table><tr><th>network</th><th>level</th>\
                    <th>until</th><th>note</th><th>defined in</th><th></th></tr>",
        );
        for r in &rules {
            let remove = r.id.as_deref().map_or(String::new(), |id| {
                format!(
                    "<form class=\"inline\" method=\"post\" action=\"/console/rules/delete\">{}\
                     <button>Remove</button></form>",
                    hidden(csrf, "id", id)
                )
            });
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{remove}</td></tr>",
                esc(&r.net),
                r.level.name(),
                when(r.until),
                esc(&r.note),
                r.source.name()
            );
        }
        let _ = write!(
            b,
            "</table><h3>Add a rule</h3><form id=\"add-rule\" method=\"post\" action=\"/console/rules\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <label>Network <input name=\"net\" id=\"rule-net\" required placeholder=\"203.0.113.0/24\"></label> \
             <label>Level <select name=\"level\" id=\"rule-level\"><option>blocked</option><option>limited</option>\
             <option>full</option></select></label> \
             <label>For hours <input name=\"expires_hours\" size=\"5\" placeholder=\"always\"></label> \
             <label>Note <input name=\"note\" maxlength=\"256\"></label> \
             <button id=\"add-rule-button\">Add</button></form></section>"
        );
        let blocks = control.blocks(p).unwrap_or_default();
        let _ = write!(
            b,
            "<section id=\"blocks\"><h2>Blocked by reputation ({})</h2><table>",
            blocks.len()
        );
        for (ip, until) in &blocks {
            let ip = ip.to_string();
            let _ = write!(
                b,
                "<tr><td>{}</td><td>until {}</td><td><form class=\"inline\" method=\"post\" \
                 action=\"/console/blocks/delete\">{}<button>Lift</button></form></td></tr>",
                esc(&ip),
                when(u64::try_from(until / 1000).ok()),
                hidden(csrf, "ip", &ip)
            );
        }
        b.push_str("</table></section>");
    }
    // Recent audit entries.
    let recent = control.recent_audit(p, 20).unwrap_or_default();
    b.push_str("<section id=\"audit\"><h2>Recent audit entries</h2><table><tr><th>when</th><th>action</th>\
                <th>by</th><th>from</th><th>target</th><th>result</th></tr>");
    for e in recent.iter().rev() {
        let s = |k: &str| e[k].as_str().map(esc).unwrap_or_default();
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            when(e["ts"].as_u64()),
            s("action"),
            e["actor"]["token_id"].as_str().map(esc).unwrap_or_default(),
            s("from"),
            s("target"),
            s("result")
        );
    }
    b.push_str("</table></section>");
    shell("Console", Some((p, csrf)), flash, &b)
}

/// One user: usage, the links in force and upcoming with QR codes, and
/// (from `standard` up, for users of the API) its controls.
pub fn user_page(
    control: &Control,
    p: &Principal,
    name: &str,
    csrf: &str,
    flash: &Flash<'_>,
) -> Result<String, ControlError> {
    let u = control.user(p, name)?;
    let mut b = format!(
        "<section><h1>User {}</h1><p>Defined in {}; {}; modes {}; {} connections; {} up, {} down.</p>",
        esc(&u.name),
        u.source.name(),
        if u.enabled { "enabled" } else { "disabled" },
        u.modes.join(", "),
        u.connections,
        mib(u.bytes_up),
        mib(u.bytes_down)
    );
    if p.role >= Role::Standard {
        for s in control.secrets(p, name)? {
            if s.state == "run_out" {
                continue;
            }
            let head = if s.current {
                format!(
                    "In force{}",
                    s.not_after
                        .map_or(String::new(), |t| format!(" until {}", when(Some(t))))
                )
            } else if s.state == "upcoming" {
                format!("Upcoming, from {}", when(s.not_before))
            } else {
                "Also accepted".into()
            };
            let _ = write!(
                b,
                "<div class=\"secret\" data-state=\"{}\"><h3>{head} (secret {})</h3>",
                s.state,
                esc(&s.id)
            );
            if let Some(best) = s.links.first() {
                let qr = crate::links::qr_svg(best).unwrap_or_default();
                let _ = write!(
                    b,
                    "<figure class=\"qr\">{qr}<figcaption>Scan in Telegram</figcaption></figure>"
                );
            }
            for l in &s.links {
                let _ = write!(b, "<p><code class=\"link\">{}</code></p>", esc(l));
            }
            if s.links.is_empty() {
                b.push_str(
                    "<p>Kept in the HSM: its links were printed once, by <code>mtgate hsm</code>.</p>",
                );
            }
            b.push_str("</div>");
        }
        if u.source == crate::control::view::Source::Api {
            let toggle = if u.enabled { "disable" } else { "enable" };
            let _ = write!(
                b,
                "<h3>Manage</h3><form class=\"inline\" method=\"post\" action=\"/console/users/rotate\">{h}\
                 <label>Old secrets run out in <input name=\"grace_hours\" value=\"168\" size=\"4\"> h</label> \
                 <button id=\"rotate\">Rotate the secret</button></form> \
                 <form class=\"inline\" method=\"post\" action=\"/console/users/{toggle}\">{h}\
                 <button id=\"{toggle}\">{Toggle}</button></form> \
                 <form class=\"inline\" method=\"post\" action=\"/console/users/delete\">{h}\
                 <button id=\"delete-user\">Delete</button></form>",
                h = hidden(csrf, "name", &u.name),
                Toggle = if u.enabled { "Disable" } else { "Enable" },
            );
        } else {
            b.push_str("<p>This user is defined in the config file: change it there.</p>");
        }
    }
    b.push_str("</section>");
    Ok(shell(
        &format!("User {}", u.name),
        Some((p, csrf)),
        flash,
        &b,
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn escaping_covers_text_and_attributes() {
        assert_eq!(
            super::esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
