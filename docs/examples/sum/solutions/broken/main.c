/* A solution that does not compile: the build fails, so it scores points_on_failure. */
#include <stdio.h>

int main(void)
{
    long long sum = 0
    printf("%lld\n", sum);
    return 0;
}
