package procs

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"text/template"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// clickHouseStartTimeout bounds how long StartClickHouse and Restart wait
// for a server to answer SELECT 1. 18.16 usually needs a second or two; a
// loaded CI machine can need much more.
const clickHouseStartTimeout = 60 * time.Second

// ClickHouseOptions configures StartClickHouse.
type ClickHouseOptions struct {
	// Dir holds the generated config, data, temporary files and logs. It is
	// created if missing and reused as is by Restart.
	Dir string
	// NativePort is the native-protocol port on 127.0.0.1; 0 picks a free one.
	NativePort int
	// Cluster, when set, names a cluster in the server's remote_servers
	// config, so Distributed tables on this server can use it.
	Cluster *ClusterConfig
}

// ClusterConfig is one cluster of a server's remote_servers config: its
// name and one native-protocol address (host:port) per shard, in shard
// order, each shard one replica of weight 1.
type ClusterConfig struct {
	Name   string
	Shards []string
}

// ClickHouse is a clickhouse-server child process with its own directory,
// listening on 127.0.0.1 only. Methods are safe for concurrent use.
type ClickHouse struct {
	Addr       string // 127.0.0.1:port, native protocol
	Dir        string
	NativePort int
	HTTPPort   int // required by the server's config; clickhouse-go does not use it
	// Cluster is the cluster the server's remote_servers config names; nil
	// for a lone server.
	Cluster *ClusterConfig

	bin string

	mu   sync.Mutex
	proc *Proc
}

// StartClickHouse writes a minimal config into o.Dir, starts
// clickhouse-server and waits until it answers SELECT 1 over the native
// protocol. The binary is $LLMCANARY_CLICKHOUSE, else clickhouse-server on
// PATH; a missing binary is an error wrapping ErrBinaryMissing.
func StartClickHouse(ctx context.Context, o ClickHouseOptions) (*ClickHouse, error) {
	if o.Dir == "" {
		return nil, errors.New("clickhouse: options: Dir is required")
	}
	bin, err := LookBinary("LLMCANARY_CLICKHOUSE", "clickhouse-server", "run make deps")
	if err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return nil, fmt.Errorf("clickhouse: %w", err)
	}
	// A free port can be taken between choosing and binding it. When the
	// caller left the choice to us, try again with fresh ports.
	attempts := 1
	if o.NativePort == 0 {
		attempts = 3
	}
	var lastErr error
	for i := 0; i < attempts; i++ {
		ports, err := FreePorts(2)
		if err != nil {
			return nil, fmt.Errorf("clickhouse: %w", err)
		}
		c := &ClickHouse{Dir: dir, NativePort: o.NativePort, HTTPPort: ports[1], Cluster: o.Cluster, bin: bin}
		if c.NativePort == 0 {
			c.NativePort = ports[0]
		}
		c.Addr = fmt.Sprintf("127.0.0.1:%d", c.NativePort)
		if err := c.writeConfig(); err != nil {
			return nil, err
		}
		lastErr = c.start(ctx)
		if lastErr == nil {
			return c, nil
		}
		if !strings.Contains(lastErr.Error(), "Address already in use") || ctx.Err() != nil {
			break
		}
	}
	return nil, lastErr
}

// Stop shuts the server down gracefully (SIGTERM, then SIGKILL after 20 s).
func (c *ClickHouse) Stop() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proc == nil {
		return nil
	}
	return c.proc.Stop(20 * time.Second)
}

// Kill ends the server at once, as an outage or a crash would.
func (c *ClickHouse) Kill() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proc == nil {
		return nil
	}
	return c.proc.Kill()
}

// Running reports whether the server process is alive.
func (c *ClickHouse) Running() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.proc != nil && !c.proc.Exited()
}

// Pid returns the server's process id, 0 before it started.
func (c *ClickHouse) Pid() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proc == nil {
		return 0
	}
	return c.proc.Pid()
}

// Restart stops the server if it still runs and starts it again with the
// same directory and ports; data written before is kept.
func (c *ClickHouse) Restart(ctx context.Context) error {
	if err := c.Stop(); err != nil {
		return err
	}
	return c.start(ctx)
}

// Conn opens a clickhouse-go native connection to the server and pings it.
// The caller closes it.
func (c *ClickHouse) Conn(ctx context.Context) (driver.Conn, error) {
	conn, err := clickhouse.Open(&clickhouse.Options{
		Addr:        []string{c.Addr},
		DialTimeout: 2 * time.Second,
	})
	if err != nil {
		return nil, fmt.Errorf("clickhouse: open %s: %w", c.Addr, err)
	}
	if err := conn.Ping(ctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("clickhouse: ping %s: %w", c.Addr, err)
	}
	return conn, nil
}

// ErrorLogTail returns the last n lines of the server's error log.
func (c *ClickHouse) ErrorLogTail(n int) string {
	return tailFile(filepath.Join(c.Dir, "log", "clickhouse-server.err.log"), n)
}

func (c *ClickHouse) configPath() string { return filepath.Join(c.Dir, "config.xml") }

// start launches the process and waits for SELECT 1. On failure the process
// is killed and the error carries the tail of the server's logs.
func (c *ClickHouse) start(ctx context.Context) error {
	p, err := StartProc("clickhouse", filepath.Join(c.Dir, "log", "stdout.log"), c.bin,
		"--config-file="+c.configPath())
	if err != nil {
		return fmt.Errorf("clickhouse: %w", err)
	}
	c.mu.Lock()
	c.proc = p
	c.mu.Unlock()

	wctx, cancel := context.WithTimeout(ctx, clickHouseStartTimeout)
	defer cancel()
	if err := c.waitReady(wctx, p); err != nil {
		_ = p.Kill()
		return fmt.Errorf("clickhouse on %s did not start: %w\n--- error log tail ---\n%s\n--- stdout tail ---\n%s",
			c.Addr, err, c.ErrorLogTail(20), p.Tail(10))
	}
	return nil
}

func (c *ClickHouse) waitReady(ctx context.Context, p *Proc) error {
	var last error
	for {
		if p.Exited() {
			return errors.New("process exited")
		}
		last = c.selectOne(ctx)
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), last)
		case <-p.Done():
			return errors.New("process exited")
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (c *ClickHouse) selectOne(ctx context.Context) error {
	qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	conn, err := c.Conn(qctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	var one uint8
	if err := conn.QueryRow(qctx, "SELECT 1").Scan(&one); err != nil {
		return err
	}
	if one != 1 {
		return fmt.Errorf("SELECT 1 returned %d", one)
	}
	// Another server already on the port would answer too, while ours is
	// about to exit with "Address already in use": check whose data this is.
	var meta string
	if err := conn.QueryRow(qctx,
		"SELECT metadata_path FROM system.tables WHERE database = 'system' LIMIT 1").Scan(&meta); err != nil {
		return err
	}
	if !strings.HasPrefix(meta, filepath.Join(c.Dir, "data")+"/") {
		return fmt.Errorf("the server on %s is not ours: its metadata is in %s", c.Addr, meta)
	}
	return nil
}

// writeConfig generates config.xml and users.xml and the directories they
// name. The config is minimal on purpose: only what 18.16 needs to run one
// local server, with small caches since tests run several side by side.
func (c *ClickHouse) writeConfig() error {
	for _, d := range []string{"data", "tmp", "user_files", "format_schemas", "log"} {
		if err := os.MkdirAll(filepath.Join(c.Dir, d), 0o755); err != nil {
			return fmt.Errorf("clickhouse: %w", err)
		}
	}
	files := map[string]*template.Template{"config.xml": configTmpl, "users.xml": usersTmpl}
	for name, t := range files {
		var b strings.Builder
		if err := t.Execute(&b, c); err != nil {
			return fmt.Errorf("clickhouse: render %s: %w", name, err)
		}
		if err := os.WriteFile(filepath.Join(c.Dir, name), []byte(b.String()), 0o644); err != nil {
			return fmt.Errorf("clickhouse: %w", err)
		}
	}
	return nil
}

var configTmpl = template.Must(template.New("config").Funcs(template.FuncMap{
	"hostOf": func(addr string) string { h, _, _ := net.SplitHostPort(addr); return h },
	"portOf": func(addr string) string { _, p, _ := net.SplitHostPort(addr); return p },
}).Parse(`<?xml version="1.0"?>
<!-- Generated by llmcanary: one local ClickHouse on loopback. -->
<yandex>
  <logger>
    <level>information</level>
    <log>{{.Dir}}/log/clickhouse-server.log</log>
    <errorlog>{{.Dir}}/log/clickhouse-server.err.log</errorlog>
    <size>20M</size>
    <count>2</count>
  </logger>
  <listen_host>127.0.0.1</listen_host>
  <tcp_port>{{.NativePort}}</tcp_port>
  <http_port>{{.HTTPPort}}</http_port>
  <max_connections>256</max_connections>
  <keep_alive_timeout>3</keep_alive_timeout>
  <max_concurrent_queries>64</max_concurrent_queries>
  <uncompressed_cache_size>67108864</uncompressed_cache_size>
  <mark_cache_size>67108864</mark_cache_size>
  <path>{{.Dir}}/data/</path>
  <tmp_path>{{.Dir}}/tmp/</tmp_path>
  <user_files_path>{{.Dir}}/user_files/</user_files_path>
  <format_schema_path>{{.Dir}}/format_schemas/</format_schema_path>
  <users_config>{{.Dir}}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mlock_executable>false</mlock_executable>
  <builtin_dictionaries_reload_interval>3600</builtin_dictionaries_reload_interval>
  <max_session_timeout>3600</max_session_timeout>
  <default_session_timeout>60</default_session_timeout>
{{- with .Cluster}}
  <remote_servers>
    <{{.Name}}>
{{- range .Shards}}
      <shard>
        <weight>1</weight>
        <replica><host>{{hostOf .}}</host><port>{{portOf .}}</port></replica>
      </shard>
{{- end}}
    </{{.Name}}>
  </remote_servers>
{{- end}}
</yandex>
`))

var usersTmpl = template.Must(template.New("users").Parse(`<?xml version="1.0"?>
<!-- Generated by llmcanary: the default user, no password, loopback only. -->
<yandex>
  <profiles>
    <default>
      <max_memory_usage>2000000000</max_memory_usage>
      <load_balancing>random</load_balancing>
    </default>
  </profiles>
  <users>
    <default>
      <password></password>
      <networks>
        <ip>127.0.0.1</ip>
      </networks>
      <profile>default</profile>
      <quota>default</quota>
    </default>
  </users>
  <quotas>
    <default>
      <interval>
        <duration>3600</duration>
        <queries>0</queries>
        <errors>0</errors>
        <result_rows>0</result_rows>
        <read_rows>0</read_rows>
        <execution_time>0</execution_time>
      </interval>
    </default>
  </quotas>
</yandex>
`))

// StartClickHouseCluster starts one server per directory in dirs, each on
// its own free ports, as the shards of a cluster named name: every
// server's remote_servers config lists all of them, in the order of dirs,
// one replica each. On error the servers already started are stopped.
func StartClickHouseCluster(ctx context.Context, name string, dirs []string) ([]*ClickHouse, error) {
	if name == "" || len(dirs) == 0 {
		return nil, errors.New("clickhouse cluster: a name and at least one directory are required")
	}
	ports, err := FreePorts(len(dirs))
	if err != nil {
		return nil, fmt.Errorf("clickhouse cluster: %w", err)
	}
	cl := &ClusterConfig{Name: name}
	for _, p := range ports {
		cl.Shards = append(cl.Shards, fmt.Sprintf("127.0.0.1:%d", p))
	}
	var out []*ClickHouse
	for i, d := range dirs {
		c, err := StartClickHouse(ctx, ClickHouseOptions{Dir: d, NativePort: ports[i], Cluster: cl})
		if err != nil {
			for _, s := range out {
				_ = s.Stop()
			}
			return nil, fmt.Errorf("clickhouse cluster %s shard %d: %w", name, i+1, err)
		}
		out = append(out, c)
	}
	return out, nil
}
