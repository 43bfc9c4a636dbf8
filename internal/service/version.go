package service

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// version and commit are stamped at link time by make build:
//
//	go build -ldflags "-X quictunnel/internal/service.version=v1.2.0 -X quictunnel/internal/service.commit=abc123"
//
// Unstamped, --version falls back to the build information Go records (the
// module version of a go install, the VCS revision of a build with
// -buildvcs).
var version, commit string

// Version describes the running binary: version, commit and Go toolchain.
// It is what --version prints after the binary's name.
func Version() string {
	info, _ := debug.ReadBuildInfo()
	return versionOf(version, commit, info)
}

// versionOf is Version for the stamped values and build information given
// (nil when the binary has none).
func versionOf(version, commit string, info *debug.BuildInfo) string {
	modified := false
	if info != nil {
		if version == "" && info.Main.Version != "" {
			version = info.Main.Version // "(devel)" for a build in the source tree
		}
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				if commit == "" {
					commit = s.Value
				}
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
	}
	if version == "" {
		version = "(devel)"
	}
	switch {
	case commit == "":
		commit = "unknown"
	case modified:
		commit += " (modified)"
	}
	return fmt.Sprintf("%s commit %s %s %s/%s", version, commit, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
