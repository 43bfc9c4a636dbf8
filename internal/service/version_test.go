package service

import (
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

func TestVersionOf(t *testing.T) {
	vcs := func(rev, modified string) *debug.BuildInfo {
		return &debug.BuildInfo{Main: debug.Module{Version: "(devel)"},
			Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: rev}, {Key: "vcs.modified", Value: modified}}}
	}
	tests := []struct {
		name            string
		version, commit string
		info            *debug.BuildInfo
		want            string
	}{
		{"stamped", "v1.2.0", "abc123", nil, "v1.2.0 commit abc123"},
		{"stamped wins over build info", "v1.2.0", "abc123", vcs("def456", "false"), "v1.2.0 commit abc123"},
		{"build info", "", "", vcs("def456", "false"), "(devel) commit def456"},
		{"modified tree", "", "", vcs("def456", "true"), "(devel) commit def456 (modified)"},
		{"go install", "", "", &debug.BuildInfo{Main: debug.Module{Version: "v0.3.1"}}, "v0.3.1 commit unknown"},
		{"nothing known", "", "", nil, "(devel) commit unknown"},
	}
	for _, tt := range tests {
		got := versionOf(tt.version, tt.commit, tt.info)
		if want := tt.want + " " + runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH; got != want {
			t.Errorf("%s: got %q, want %q", tt.name, got, want)
		}
	}
	if v := Version(); !strings.Contains(v, " commit ") {
		t.Errorf("Version() = %q", v)
	}
}
