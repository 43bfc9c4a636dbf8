package dnshook_test

import (
	"context"
	"fmt"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"

	"quictunnel/internal/dnshook"
)

// A Solver is certmagic's DNS-01 solver: the CA's challenges then go to
// the hook. /bin/true stands in for a hook that adds the record.
func Example() {
	solver, err := dnshook.New(dnshook.Config{Path: "/bin/true"})
	if err != nil {
		fmt.Println(err)
		return
	}
	issuer := certmagic.ACMEIssuer{Email: "ops@example.org", Agreed: true, DNS01Solver: solver}
	_ = issuer

	chal := acme.Challenge{Type: acme.ChallengeTypeDNS01, KeyAuthorization: "token.thumbprint",
		Identifier: acme.Identifier{Type: "dns", Value: "apps.example.org"}}
	fmt.Println("present:", solver.Present(context.Background(), chal))
	fmt.Println("cleanup:", solver.CleanUp(context.Background(), chal))
	// Output:
	// present: <nil>
	// cleanup: <nil>
}
