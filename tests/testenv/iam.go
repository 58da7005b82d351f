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
)

// AuthMoto is moto in server mode with request signing enforced: after the
// admin user is made (moto's INITIAL_NO_AUTH_ACTION_COUNT unauthenticated
// actions), every request's SigV4 signature and IAM policy are checked.
type AuthMoto struct {
	*Process
	Admin aws.Credentials
}

// StartAuthMoto starts such a moto on a free loopback port, or skips.
func StartAuthMoto(t testing.TB) *AuthMoto {
	t.Helper()
	if _, err := exec.LookPath("moto_server"); err != nil {
		SkipOrFail(t, "moto_server is not installed: "+SkipHint)
	}
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("moto_server", "-H", "127.0.0.1", "-p", fmt.Sprint(port))
	cmd.Env = append(cmd.Environ(), "INITIAL_NO_AUTH_ACTION_COUNT=3")
	p, err := start("moto-auth", cmd, fmt.Sprintf("http://127.0.0.1:%d", port), "/moto-api/", "GET")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	m := &AuthMoto{Process: p}
	ctx := context.Background()
	// The three unauthenticated actions: an administrator with a key.
	boot := m.IAM(aws.Credentials{AccessKeyID: "AKIDBOOTSTRAP", SecretAccessKey: "bootstrap"})
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
	m.Admin = aws.Credentials{AccessKeyID: *k.AccessKey.AccessKeyId, SecretAccessKey: *k.AccessKey.SecretAccessKey}
	return m
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
