// Reference renderer for confsync's converter tests: executes a Go text/template the way confd
// does (nil data, confd's function names) over a JSON object of key -> value, and prints the
// result. Written for confsync's tests; only used at development time to produce golden files.
//
//	go run . TEMPLATE DATA.json > expected
package main

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/template"
	"time"
)

type KVPair struct {
	Key   string
	Value string
}

type store map[string]string

func (s store) get(key string) (KVPair, error) {
	v, ok := s[key]
	if !ok {
		return KVPair{}, fmt.Errorf("key does not exist: %s", key)
	}
	return KVPair{key, v}, nil
}

func (s store) getv(key string, def ...string) (string, error) {
	kv, err := s.get(key)
	if err != nil {
		if len(def) > 0 {
			return def[0], nil
		}
		return "", err
	}
	return kv.Value, nil
}

func (s store) gets(pattern string) ([]KVPair, error) {
	out := []KVPair{}
	for k, v := range s {
		ok, err := path.Match(pattern, k)
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, KVPair{k, v})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

func (s store) getvs(pattern string) ([]string, error) {
	kvs, err := s.gets(pattern)
	if err != nil {
		return nil, err
	}
	out := []string{}
	for _, kv := range kvs {
		out = append(out, kv.Value)
	}
	sort.Strings(out)
	return out, nil
}

// children lists the names directly under dir; dirsOnly keeps those that have children.
func (s store) children(dir string, dirsOnly bool) []string {
	base := strings.TrimSuffix(path.Clean(dir), "/") + "/"
	seen := map[string]bool{}
	for k := range s {
		if k == path.Clean(dir) && !dirsOnly {
			seen[path.Base(k)] = true
			continue
		}
		if !strings.HasPrefix(k, base) {
			continue
		}
		rest := strings.TrimPrefix(k, base)
		name, _, deeper := strings.Cut(rest, "/")
		if name != "" && (!dirsOnly || deeper) {
			seen[name] = true
		}
	}
	out := []string{}
	for n := range seen {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func funcs(s store) template.FuncMap {
	return template.FuncMap{
		"get":    s.get,
		"gets":   s.gets,
		"getv":   s.getv,
		"getvs":  s.getvs,
		"exists": func(k string) bool { _, ok := s[k]; return ok },
		"ls":     func(d string) []string { return s.children(d, false) },
		"lsdir":  func(d string) []string { return s.children(d, true) },
		"base":   path.Base,
		"dir":    path.Dir,
		"split":  strings.Split,
		"join":   strings.Join,
		"json": func(text string) (map[string]interface{}, error) {
			var m map[string]interface{}
			err := json.Unmarshal([]byte(text), &m)
			return m, err
		},
		"jsonArray": func(text string) ([]interface{}, error) {
			var a []interface{}
			err := json.Unmarshal([]byte(text), &a)
			return a, err
		},
		"map": func(pairs ...interface{}) (map[string]interface{}, error) {
			if len(pairs)%2 != 0 {
				return nil, errors.New("invalid map call")
			}
			m := map[string]interface{}{}
			for i := 0; i < len(pairs); i += 2 {
				k, ok := pairs[i].(string)
				if !ok {
					return nil, errors.New("map keys must be strings")
				}
				m[k] = pairs[i+1]
			}
			return m, nil
		},
		"getenv": func(k string, def ...string) string {
			if v := os.Getenv(k); v != "" {
				return v
			}
			if len(def) > 0 {
				return def[0]
			}
			return ""
		},
		"datetime":   time.Now,
		"toUpper":    strings.ToUpper,
		"toLower":    strings.ToLower,
		"contains":   strings.Contains,
		"replace":    strings.Replace,
		"trimSuffix": strings.TrimSuffix,
		"lookupIP": func(name string) []string {
			ips, err := net.LookupIP(name)
			if err != nil {
				return nil
			}
			out := []string{}
			for _, ip := range ips {
				out = append(out, ip.String())
			}
			sort.Strings(out)
			return out
		},
		"fileExists": func(p string) bool { _, err := os.Stat(p); return err == nil },
		"base64Encode": func(t string) string {
			return base64.StdEncoding.EncodeToString([]byte(t))
		},
		"base64Decode": func(t string) (string, error) {
			b, err := base64.StdEncoding.DecodeString(t)
			return string(b), err
		},
		"parseBool": strconv.ParseBool,
		"reverse": func(v interface{}) interface{} {
			switch l := v.(type) {
			case []string:
				for i, j := 0, len(l)-1; i < j; i, j = i+1, j-1 {
					l[i], l[j] = l[j], l[i]
				}
			case []KVPair:
				for i, j := 0, len(l)-1; i < j; i, j = i+1, j-1 {
					l[i], l[j] = l[j], l[i]
				}
			}
			return v
		},
		"sortByLength": func(l []string) []string {
			sort.Sort(byLen(l))
			return l
		},
		"sortKVByLength": func(l []KVPair) []KVPair {
			sort.Sort(kvByLen(l))
			return l
		},
		"add": func(a, b int) int { return a + b },
		"sub": func(a, b int) int { return a - b },
		"div": func(a, b int) int { return a / b },
		"mod": func(a, b int) int { return a % b },
		"mul": func(a, b int) int { return a * b },
		"seq": func(first, last int) []int {
			var out []int
			for i := first; i <= last; i++ {
				out = append(out, i)
			}
			return out
		},
		"atoi": strconv.Atoi,
	}
}

// The same unstable sort as confd (sort.Sort), so equal-length order matches too.
type byLen []string

func (s byLen) Len() int           { return len(s) }
func (s byLen) Swap(i, j int)      { s[i], s[j] = s[j], s[i] }
func (s byLen) Less(i, j int) bool { return len(s[i]) < len(s[j]) }

type kvByLen []KVPair

func (s kvByLen) Len() int           { return len(s) }
func (s kvByLen) Swap(i, j int)      { s[i], s[j] = s[j], s[i] }
func (s kvByLen) Less(i, j int) bool { return len(s[i].Key) < len(s[j].Key) }

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: gotmpl TEMPLATE DATA.json")
		os.Exit(2)
	}
	raw, err := os.ReadFile(os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	data := store{}
	if err := json.Unmarshal(raw, &data); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	name := filepath.Base(os.Args[1])
	tmpl, err := template.New(name).Funcs(funcs(data)).ParseFiles(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := tmpl.Execute(os.Stdout, nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
