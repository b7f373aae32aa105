package analyzer

import (
	"net/http"
	"net/http/httptest"
	"os"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/llmcanary/llmcanary/internal/health"
)

type openAPIDoc struct {
	Paths      map[string]map[string]any `json:"paths"`
	Components struct {
		Schemas map[string]struct {
			Properties map[string]any `json:"properties"`
		} `json:"schemas"`
	} `json:"components"`
}

func loadOpenAPI(t *testing.T) openAPIDoc {
	t.Helper()
	raw, err := os.ReadFile("openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc openAPIDoc
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	return doc
}

// servedAPI is the analyzer's HTTP surface as `llmcanary analyzer` serves
// it: the rollout API, the two mounted handlers (stubs here: their own
// packages test them) and the health and metrics endpoints beside it.
func servedAPI(t *testing.T) (*API, *httptest.Server) {
	t.Helper()
	st, err := OpenRolloutStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	api := NewAPI(&Runner{Store: st}, "tok", nil)
	stub := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusTeapot) })
	api.Mount(RouteFeedback, stub)
	api.Mount(RouteReport, stub)
	srv := httptest.NewServer(health.Beside(api.Handler(), health.NewRegistry(), nil, false))
	t.Cleanup(srv.Close)
	return api, srv
}

// TestOpenAPIDocumentsExactlyTheRoutesTheAnalyzerServes keeps
// analyzer/openapi.yaml and the handler in step both ways: every route is
// documented, and every documented operation is served (not the catch-all
// 404, not a 405).
func TestOpenAPIDocumentsExactlyTheRoutesTheAnalyzerServes(t *testing.T) {
	doc := loadOpenAPI(t)
	api, srv := servedAPI(t)
	var documented []string
	for path, ops := range doc.Paths {
		for method := range ops {
			if method != "parameters" {
				documented = append(documented, strings.ToUpper(method)+" "+path)
			}
		}
	}
	served := append(api.Routes(), health.RouteReady, health.RouteMetrics)
	sort.Strings(documented)
	sort.Strings(served)
	if !slices.Equal(documented, served) {
		t.Fatalf("documented operations:\n  %s\nserved routes:\n  %s", strings.Join(documented, "\n  "), strings.Join(served, "\n  "))
	}
	for _, op := range documented {
		method, path, _ := strings.Cut(op, " ")
		url := srv.URL + strings.NewReplacer("{id}", "r-nope", "{op}", "pause").Replace(path)
		req, _ := http.NewRequest(method, url, strings.NewReader("{}"))
		req.Header.Set("Authorization", "Bearer tok")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		buf := make([]byte, 512)
		n, _ := resp.Body.Read(buf)
		b.Write(buf[:n])
		resp.Body.Close()
		if resp.StatusCode == http.StatusMethodNotAllowed || strings.Contains(b.String(), "no such endpoint") {
			t.Errorf("%s is documented but not served (%d %s)", op, resp.StatusCode, b.String())
		}
	}
}

// TestOpenAPISchemasNameEveryJSONField checks the documented bodies
// against the Go types the API encodes and decodes.
func TestOpenAPISchemasNameEveryJSONField(t *testing.T) {
	doc := loadOpenAPI(t)
	for schema, typ := range map[string]reflect.Type{
		"StartRequest":   reflect.TypeOf(StartRequest{}),
		"OperateRequest": reflect.TypeOf(OperateRequest{}),
		"RolloutView":    reflect.TypeOf(RolloutView{}),
		"Decision":       reflect.TypeOf(Decision{}),
		"MetricResult":   reflect.TypeOf(MetricResult{}),
		"Event":          reflect.TypeOf(Event{}),
		"Plan":           reflect.TypeOf(Plan{}),
	} {
		s, ok := doc.Components.Schemas[schema]
		if !ok {
			t.Errorf("schema %s is not documented", schema)
			continue
		}
		for _, f := range jsonFields(typ) {
			if _, ok := s.Properties[f]; !ok {
				t.Errorf("schema %s lacks the field %q", schema, f)
			}
		}
		for p := range s.Properties {
			if !slices.Contains(jsonFields(typ), p) {
				t.Errorf("schema %s documents %q, which %s does not have", schema, p, typ)
			}
		}
	}
}

// jsonFields are a struct's JSON field names, embedded structs' included.
func jsonFields(t reflect.Type) []string {
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	var out []string
	for i := range t.NumField() {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		switch {
		case tag == "-":
		case f.Anonymous && tag == "":
			out = append(out, jsonFields(f.Type)...)
		case f.IsExported():
			if tag == "" {
				tag = f.Name
			}
			out = append(out, tag)
		}
	}
	return out
}
