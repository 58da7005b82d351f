package store

import (
	"fmt"

	"github.com/aws/aws-sdk-go-v2/feature/dynamodb/attributevalue"
	ddbtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
)

var (
	_ attributevalue.Marshaler   = Secret{}
	_ attributevalue.Unmarshaler = (*Secret)(nil)
)

// MarshalDynamoDBAttributeValue stores a plain token as S and a sealed one as
// B, so a reader can tell them apart without another attribute.
func (s Secret) MarshalDynamoDBAttributeValue() (ddbtypes.AttributeValue, error) {
	switch {
	case len(s.Sealed) > 0:
		return &ddbtypes.AttributeValueMemberB{Value: s.Sealed}, nil
	case s.Plain != "":
		return &ddbtypes.AttributeValueMemberS{Value: s.Plain}, nil
	default:
		return &ddbtypes.AttributeValueMemberNULL{Value: true}, nil
	}
}

// UnmarshalDynamoDBAttributeValue is the inverse of MarshalDynamoDBAttributeValue.
func (s *Secret) UnmarshalDynamoDBAttributeValue(av ddbtypes.AttributeValue) error {
	switch v := av.(type) {
	case *ddbtypes.AttributeValueMemberB:
		*s = Secret{Sealed: v.Value}
	case *ddbtypes.AttributeValueMemberS:
		*s = Secret{Plain: v.Value}
	case *ddbtypes.AttributeValueMemberNULL, nil:
		*s = Secret{}
	default:
		return fmt.Errorf("access_token: unexpected attribute type %T", av)
	}
	return nil
}
