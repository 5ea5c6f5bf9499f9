// Command step-ca is a minimal build of smallstep's step-ca for the Muster
// enrollment benchmark. Debian's golang-github-smallstep-certificates-dev
// ships the certificates library without cmd/step-ca; this main does what
// upstream's does: run commands.AppCommand as the top-level action, so the
// usual `step-ca <ca.json> [--password-file=<file>]` command line works.
// Only the software CAS/KMS (the defaults) are linked in.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/smallstep/certificates/commands"
	"github.com/urfave/cli"
	"go.step.sm/cli-utils/step"
)

func main() {
	step.Set("Smallstep CA", "0.19.0-debian", "N/A")

	app := cli.NewApp()
	app.Name = "step-ca"
	app.HelpName = "step-ca"
	app.Version = step.Version()
	app.Usage = "an online certificate authority for secure automated certificate management"
	app.UsageText = "step-ca <config> [--password-file=<file>]"
	app.Flags = append(app.Flags, commands.AppCommand.Flags...)
	app.Flags = append(app.Flags, cli.HelpFlag)
	app.Writer = os.Stdout
	app.ErrWriter = os.Stderr

	// As upstream: run the "start" command as the top-level action, handing
	// it the whole argument list so that flags may follow the config path.
	app.Action = func(_ *cli.Context) error {
		set := flag.NewFlagSet(app.Name, flag.ContinueOnError)
		if err := set.Parse(os.Args); err != nil {
			return err
		}
		ctx := cli.NewContext(app, set, nil)
		return commands.AppCommand.Run(ctx)
	}

	if err := app.Run(os.Args); err != nil {
		if os.Getenv("STEPDEBUG") == "1" {
			fmt.Fprintf(os.Stderr, "%+v\n", err)
		} else {
			fmt.Fprintln(os.Stderr, err)
		}
		os.Exit(1)
	}
}
