/* A sample that does not compile: the demo grades it 0, with the reason. */
#include <stdio.h>

int main(void)
{
	printf("Hello, world!\n")
	return 0;
}
