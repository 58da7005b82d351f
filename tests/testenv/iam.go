package testenv

import (
	"context"
	"fmt"
	"os/exec"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// AuthMoto is moto in server mode with request signing enforced: after the
// admin user is made (moto's INITIAL_NO_AUTH_ACTION_COUNT unauthenticated
// actions), every request's SigV4 signature and IAM policy are checked.
type AuthMoto struct {
	*Process
	Admin aws.Credentials
	// Admins holds an administrator of each extra account asked for
	// (moto's accounts are told apart by their access keys).
	Admins map[string]aws.Credentials
}

// StartAuthMoto starts such a moto on a free loopback port, or skips, with
// an administrator in moto's default account and in each of extraAccounts.
func StartAuthMoto(t testing.TB, extraAccounts ...string) *AuthMoto {
	t.Helper()
	if _, err := exec.LookPath("moto_server"); err != nil {
		SkipOrFail(t, "moto_server is not installed: "+SkipHint)
	}
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("moto_server", "-H", "127.0.0.1", "-p", fmt.Sprint(port))
	cmd.Env = append(cmd.Environ(), fmt.Sprintf("INITIAL_NO_AUTH_ACTION_COUNT=%d", 3*(1+len(extraAccounts))))
	p, err := start("moto-auth", cmd, fmt.Sprintf("http://127.0.0.1:%d", port), "/moto-api/", "GET")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	m := &AuthMoto{Process: p, Admins: map[string]aws.Credentials{}}
	m.Admin = m.bootstrap(t, "")
	for _, a := range extraAccounts {
		m.Admins[a] = m.bootstrap(t, a)
	}
	return m
}

// bootstrap spends three unauthenticated actions on an administrator with
// a key, in account (moto's x-moto-account-id; "" is the default account).
func (m *AuthMoto) bootstrap(t testing.TB, account string) aws.Credentials {
	t.Helper()
	ctx := context.Background()
	boot := iam.NewFromConfig(m.cfg(aws.Credentials{AccessKeyID: "AKIDBOOTSTRAP", SecretAccessKey: "bootstrap"}), func(o *iam.Options) {
		if account != "" {
			o.APIOptions = append(o.APIOptions, smithyhttp.AddHeaderValue("x-moto-account-id", account))
		}
	})
	if _, err := boot.CreateUser(ctx, &iam.CreateUserInput{UserName: aws.String("admin")}); err != nil {
		t.Fatal(err)
	}
	k, err := boot.CreateAccessKey(ctx, &iam.CreateAccessKeyInput{UserName: aws.String("admin")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := boot.PutUserPolicy(ctx, &iam.PutUserPolicyInput{UserName: aws.String("admin"), PolicyName: aws.String("all"),
		PolicyDocument: aws.String(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}`)}); err != nil {
		t.Fatal(err)
	}
	return aws.Credentials{AccessKeyID: *k.AccessKey.AccessKeyId, SecretAccessKey: *k.AccessKey.SecretAccessKey}
}

func (m *AuthMoto) cfg(c aws.Credentials) aws.Config {
	return aws.Config{Region: "us-east-1", Credentials: credentials.StaticCredentialsProvider{Value: c}, BaseEndpoint: aws.String(m.Endpoint)}
}

// IAM is an IAM client signing with c.
func (m *AuthMoto) IAM(c aws.Credentials) *iam.Client { return iam.NewFromConfig(m.cfg(c)) }

// STS is an STS client signing with c.
func (m *AuthMoto) STS(c aws.Credentials) *sts.Client { return sts.NewFromConfig(m.cfg(c)) }

// Role creates a role (at path) any principal of the account may assume,
// assumes it as session, and returns the role's ARN and the session's
// credentials.
func (m *AuthMoto) Role(t testing.TB, path, name, session string) (string, aws.Credentials) {
	t.Helper()
	ctx := context.Background()
	r, err := m.IAM(m.Admin).CreateRole(ctx, &iam.CreateRoleInput{RoleName: aws.String(name), Path: aws.String(path),
		AssumeRolePolicyDocument: aws.String(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"*"},"Action":"sts:AssumeRole"}]}`)})
	if err != nil {
		t.Fatal(err)
	}
	out, err := m.STS(m.Admin).AssumeRole(ctx, &sts.AssumeRoleInput{RoleArn: r.Role.Arn, RoleSessionName: aws.String(session)})
	if err != nil {
		t.Fatal(err)
	}
	c := out.Credentials
	return *r.Role.Arn, aws.Credentials{AccessKeyID: *c.AccessKeyId, SecretAccessKey: *c.SecretAccessKey, SessionToken: *c.SessionToken, CanExpire: true, Expires: *c.Expiration}
}
