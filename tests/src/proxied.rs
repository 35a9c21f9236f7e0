//! PROXY-protocol-aware backends from Debian's packages (HAProxy, nginx), configured to
//! answer every request with, and log, the client address the PROXY header gave them.
//! Only configuration text and the commands that run them; the caller picks the network
//! namespace (or the kubelet stand-in runs them as pods).

use std::path::Path;

/// HAProxy listening on `bind` (`addr:port`) with `accept-proxy`; it answers
/// `haproxy saw ADDR:PORT` and logs the same line to stdout.
pub fn haproxy_config(bind: &str) -> String {
    format!(
        "global
    log stdout format raw local0
defaults
    mode http
    log global
    log-format \"haproxy logged %ci:%cp\"
    timeout connect 5s
    timeout client 10s
    timeout server 10s
frontend proxied
    bind {bind} accept-proxy
    http-request return status 200 content-type text/plain lf-string \"haproxy saw %[src]:%[src_port]\\n\"
"
    )
}

/// nginx listening on `listen` (`addr:port`) with `proxy_protocol`, everything it writes
/// under `dir`; it answers `nginx saw ADDR:PORT` and logs `$proxy_protocol_addr`.
pub fn nginx_config(listen: &str, dir: &Path) -> String {
    let d = dir.display();
    format!(
        "daemon off;
user root;
pid {d}/nginx.pid;
error_log stderr;
events {{}}
http {{
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    log_format proxied 'nginx logged $proxy_protocol_addr:$proxy_protocol_port';
    access_log /dev/stdout proxied;
    server {{
        listen {listen} proxy_protocol;
        location / {{
            default_type text/plain;
            return 200 'nginx saw $proxy_protocol_addr:$proxy_protocol_port\\n';
        }}
    }}
}}
"
    )
}

/// The shell command that runs HAProxy on `config` in the foreground, output to `log`.
pub fn haproxy_command(config: &Path, log: &Path) -> String {
    format!(
        "exec haproxy -db -f '{}' >'{}' 2>&1",
        config.display(),
        log.display()
    )
}

/// The shell command that runs nginx on `config` in the foreground, output to `log`.
pub fn nginx_command(config: &Path, log: &Path) -> String {
    format!(
        "exec nginx -e stderr -c '{}' >'{}' 2>&1",
        config.display(),
        log.display()
    )
}
