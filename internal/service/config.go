package service

import (
	"fmt"
	"os"
	"reflect"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"
	"gopkg.in/yaml.v3"
)

// checkFlags reports a service flag that cannot be set all three ways: it
// must be an altsrc flag (so --config can set it) with an environment
// variable. These are programming errors in a cmd/ package.
func checkFlags(flags []cli.Flag) error {
	for _, f := range flags {
		name := f.Names()[0]
		if _, ok := f.(altsrc.FlagInputSourceExtension); !ok {
			return fmt.Errorf("flag --%s is not an altsrc flag, so --config cannot set it", name)
		}
		if d, ok := f.(cli.DocGenerationFlag); !ok || len(d.GetEnvVars()) == 0 {
			return fmt.Errorf("flag --%s has no EnvVars", name)
		}
	}
	return nil
}

// takeRequired clears Required on the flags that have it and returns their
// names. urfave/cli checks required flags before Before has read the
// --config file, so a required setting given only in the file would be
// refused; Main checks them itself (checkRequired) once all sources are in.
func takeRequired(flags []cli.Flag) []string {
	var names []string
	for _, f := range flags {
		rf, ok := f.(cli.RequiredFlag)
		if !ok || !rf.IsRequired() {
			continue
		}
		v := reflect.ValueOf(f)
		for v.Kind() == reflect.Pointer && !v.IsNil() {
			v = v.Elem()
		}
		if v.Kind() != reflect.Struct {
			continue
		}
		if fv := v.FieldByName("Required"); fv.IsValid() && fv.CanSet() && fv.Kind() == reflect.Bool {
			fv.SetBool(false)
			names = append(names, f.Names()[0])
		}
	}
	return names
}

// checkRequired reports the first required flag set neither on the command
// line, nor in the environment, nor in the --config file.
func checkRequired(c *cli.Context, names []string, flags []cli.Flag) error {
	for _, name := range names {
		if c.IsSet(name) {
			continue
		}
		where := "--" + name
		for _, f := range flags {
			if d, ok := f.(cli.DocGenerationFlag); ok && f.Names()[0] == name && len(d.GetEnvVars()) > 0 {
				where += ", $" + d.GetEnvVars()[0]
			}
		}
		return &SettingError{Setting: "--" + name, Reason: fmt.Sprintf("required: give %s or %q in the --config file", where, name+":")}
	}
	return nil
}

// loadConfig reads the YAML file at path and applies its values to the
// flags not already set on the command line or in the environment. Keys are
// the flags' long names; an unknown key is an error, so a typo does not
// silently leave a default in force.
func loadConfig(c *cli.Context, path string, flags []cli.Flag) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return &SettingError{Setting: "--config", Value: path, Reason: readReason(err)}
	}
	m := map[any]any{}
	if err := yaml.Unmarshal(b, &m); err != nil {
		return &SettingError{Setting: "--config", Value: path, Reason: "not a YAML mapping of flag names to values: " + err.Error()}
	}
	known := map[string]bool{}
	var sources []cli.Flag
	for _, f := range flags {
		if _, ok := f.(altsrc.FlagInputSourceExtension); !ok {
			continue // --config itself
		}
		sources = append(sources, f)
		for _, n := range f.Names() {
			known[n] = true
		}
	}
	var unknown []string
	for k := range m {
		if s, ok := k.(string); !ok || !known[s] {
			unknown = append(unknown, fmt.Sprint(k))
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		names := slices.Sorted(func(yield func(string) bool) {
			for n := range known {
				if !yield(n) {
					return
				}
			}
		})
		return &SettingError{Setting: "--config", Value: path,
			Reason: fmt.Sprintf("unknown key(s) %s; the keys are the long flag names: %s",
				strings.Join(unknown, ", "), strings.Join(names, ", "))}
	}
	if err := altsrc.ApplyInputSourceValues(c, altsrc.NewMapInputSource(path, m), sources); err != nil {
		return &SettingError{Setting: "--config", Value: path, Reason: err.Error()}
	}
	return nil
}

func readReason(err error) string {
	if os.IsNotExist(err) {
		return "no such file"
	}
	if os.IsPermission(err) {
		return "permission denied"
	}
	return err.Error()
}
